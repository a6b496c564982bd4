"""The settings docs/cluster.md shows are ones Config takes, meaning what it says."""

from __future__ import annotations

import yaml

from rpc.config import Config
from tests.readme import doc_blocks


def test_the_node_list_file_gives_three_nodes_and_quorum_queues(tmp_path):
    path = tmp_path / "rpc.yaml"
    path.write_text(doc_blocks("cluster.md", "yaml")[0])
    config = Config.load(path, environ={})
    assert len(config.broker_urls) == 3
    assert config.broker_url == ";".join(config.broker_urls)
    assert config.queue_type == "quorum"
    assert config.node_connect_timeout == 2


def test_the_partitions_file_partitions_orders_over_three_balanced_queues():
    settings = yaml.safe_load(doc_blocks("cluster.md", "yaml")[1])
    config = Config(**settings)
    assert config.partitions == {"orders": 3}
    assert config.quorum_placement() == {"x-queue-leader-locator": "balanced"}
