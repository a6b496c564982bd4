"""A broker list: split, masked, and dialled from a random node, moving on each time."""

from __future__ import annotations

import pytest

from rpc.broker_urls import BrokerNodes, masked, split_urls
from rpc.config import Config
from rpc.errors import ConfigError

A = "amqp://user:secret@a:5672//"
B = "amqp://user:secret@b:5672//"
C = "amqp://c:5672/prod"


def test_a_list_is_split_at_semicolons_and_blanks_dropped():
    assert split_urls(f" {A} ;{B};; {C} ") == (A, B, C)
    assert split_urls([A, f"{B};{C}"]) == (A, B, C)


@pytest.mark.parametrize("bad", ["", " ; ", [], "amqp://a//;nowhere"])
def test_an_empty_list_or_an_entry_that_is_no_url_is_refused(bad):
    with pytest.raises(ConfigError):
        split_urls(bad)


def test_passwords_are_masked_and_nothing_else_changes():
    assert masked(A) == "amqp://user:**@a:5672//"
    assert masked(C) == C
    assert masked("amqp://guest:p%40ss@h:5673/v") == "amqp://guest:**@h:5673/v"
    assert "x" not in masked("amqp://u:x@h:notaport//")


def test_each_list_starts_at_a_random_node():
    firsts = {BrokerNodes([A, B, C]).round()[0] for _ in range(200)}
    assert firsts == {A, B, C}


def test_a_round_tries_every_node_once_from_the_one_whose_turn_it_is():
    nodes = BrokerNodes([A, B, C], first=1)
    assert nodes.round() == [B, C, A]


def test_the_next_round_starts_past_the_node_last_dialled():
    nodes = BrokerNodes([A, B, C], first=0)
    nodes.taking(A)  # connected to A, which is later lost
    assert nodes.current == A
    assert nodes.round() == [B, C, A]
    nodes.taking(B)  # B refused: the round goes on to C
    nodes.taking(C)
    assert nodes.safe_current == C
    assert nodes.round() == [A, B, C]


def test_one_node_is_a_list_of_one():
    nodes = BrokerNodes(C)
    assert nodes.round() == [C]
    nodes.taking(C)
    assert nodes.round() == [C]


def test_config_takes_a_list_or_a_joined_string_and_says_both():
    listed = Config(broker_urls=(A, B))
    assert listed.broker_url == f"{A};{B}"
    joined = Config(broker_url=f"{A};{B}")
    assert joined.broker_urls == (A, B)
    assert Config(broker_urls=f"{A};{B}").broker_urls == (A, B)  # type: ignore[arg-type]


def test_a_higher_layer_naming_the_broker_replaces_a_lower_list(tmp_path):
    path = tmp_path / "rpc.yaml"
    path.write_text(f"broker_urls: ['{A}', '{B}']\n")
    assert Config.load(path, environ={}).broker_urls == (A, B)
    from_env = Config.load(path, environ={"RPC_BROKER_URL": C})
    assert from_env.broker_urls == (C,)
    from_flag = Config.load(path, environ={}, broker_url=f"{C};{A}")
    assert from_flag.broker_urls == (C, A)
    replaced = Config(broker_urls=(A, B)).replace(broker_url=C)
    assert replaced.broker_urls == (C,)
    assert replaced.broker_url == C


def test_config_errors_never_show_a_password():
    with pytest.raises(ConfigError) as raised:
        Config(broker_url=f"{A};user:secret@nowhere")
    assert "secret" not in str(raised.value)


def test_listed_order_starts_every_connection_at_the_first_node():
    from rpc.transport.link import Link

    def link(config: Config) -> Link:
        return Link(
            config.broker_url,
            name="t",
            heartbeat=0,
            connect_timeout=1,
            on_connect=lambda channel: None,
            on_disconnect=None,
            on_tick=None,
            reconnect=False,
            confirms=None,
            dispatcher=None,  # type: ignore[arg-type]
            listed_order=config.broker_order == "listed",
        )

    listed = Config(broker_urls=(A, B, C), broker_order="listed")
    assert all(link(listed).nodes.round()[0] == A for _ in range(20))
    spread = Config(broker_urls=(A, B, C))
    assert len({link(spread).nodes.round()[0] for _ in range(60)}) > 1


def test_broker_order_takes_only_its_named_values():
    with pytest.raises(ConfigError, match="broker_order"):
        Config(broker_order="nearest")
