"""The settings example of docs/cluster-faults.md is valid, and means what it says."""

from __future__ import annotations

import re
from pathlib import Path

from rpc import Config

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cluster-faults.md"


def test_the_cluster_settings_example_loads(tmp_path):
    (block,) = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), re.DOTALL)
    path = tmp_path / "rpc.yaml"
    path.write_text(block)
    config = Config.load(path, environ={})
    assert config.queue_type == "quorum"
    assert config.copies == "confirmed"
    assert config.private_replies  # auto, with quorum queues


def test_auto_replies_are_direct_on_one_node_and_private_on_a_cluster():
    assert not Config().private_replies
    assert Config(queue_type="quorum").private_replies
    two = "amqp://guest:guest@a:5672//;amqp://guest:guest@b:5672//"
    assert Config(broker_url=two).private_replies
    assert not Config(queue_type="quorum", reply_queue="direct").private_replies
    assert Config(reply_queue="private").private_replies
