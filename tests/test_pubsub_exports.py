"""The pub-sub, topic and pipeline names are public and come from their private modules."""

from __future__ import annotations

import phoenix_trio as px
from phoenix_trio import _pipeline, _pubsub, _topics

EXPORTS = {
    _topics: ["InvalidTopic", "TopicTrie", "pattern_matches", "validate_pattern", "validate_topic"],
    _pubsub: ["PUBLISH_TYPE", "PubSub", "PubSubStatistics", "Subscription", "SubscriptionStatistics"],
    _pipeline: [
        "DEAD_LETTER_TYPE", "METRIC_TYPE", "PIPELINE_TYPE", "RESULT_TYPE", "STAGE_ERROR_TYPE", "Pipeline",
        "PipelineError", "PipelineResult", "PipelineStatistics", "PipelineStopped", "Stage", "StageStatistics",
        "serve_stage", "stage_error",
    ],
}  # fmt: skip


def test_every_documented_name_is_exported_from_the_package() -> None:
    for module, names in EXPORTS.items():
        for name in names:
            assert getattr(px, name) is getattr(module, name), name


def test_errors_belong_to_the_tree() -> None:
    assert issubclass(px.InvalidTopic, px.ValidationError) and issubclass(px.InvalidTopic, ValueError)
    assert issubclass(px.PipelineStopped, px.PipelineError) and issubclass(px.PipelineError, px.PhoenixError)


def test_the_node_has_the_pattern_entry_points() -> None:
    for name in ("publish", "subscribe", "unsubscribe", "create_pipeline", "send_to_pipeline"):
        assert callable(getattr(px.Node, name)), name
