"""The cache benchmark's key-distribution table, which needs no server."""

from __future__ import annotations

import pytest

from benchmarks import cache


def test_first_letters_pile_every_user_key_on_one_server_and_hashes_spread_them():
    table = cache.distribution(20_000)
    shares = table["shares"]
    assert shares["first letter"] == {
        "server0": 0.0,
        "server1": 0.0,
        "server2": 0.0,
        "server3": 1.0,
    }
    for scheme in ("md5 mod 4", "rendezvous (our client)"):
        assert sum(shares[scheme].values()) == pytest.approx(1.0)
        assert all(0.23 < share < 0.27 for share in shares[scheme].values()), scheme


def test_losing_one_server_of_four_moves_its_quarter_only_with_rendezvous():
    moved = cache.distribution(20_000)["moved_when_server3_is_lost"]
    assert 0.23 < moved["rendezvous (our client)"] < 0.27
    assert moved["md5 mod 4"] > 0.7  # modulo 3 instead of 4 reshuffles nearly all


def test_the_markdown_has_one_row_per_scheme_and_the_batches():
    results = {
        "distribution": cache.distribution(1000),
        "batches": {
            "calls": 2000,
            "domain": 5000,
            "seconds": [2.5, 1.5, 1.0],
            "hit_share": [0.1, 0.5, 0.75],
        },
        "latency": {"calls": 2000, "cached_p50_us": 900.0, "uncached_p50_us": 2100.0},
    }
    text = "\n".join(cache.markdown(results))
    assert "| 2.50 | 1.50 | 1.00 |" in text
    assert "| 10% | 50% | 75% |" in text
    assert "| cached (a hit) | 900 |" in text
    for scheme in results["distribution"]["shares"]:
        assert f"| {scheme} |" in text
