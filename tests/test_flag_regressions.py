"""Flag values the property-based suite found crashing, kept as plain regression tests."""

from __future__ import annotations

import pytest

from resnet_xray.errors import XrayError
from resnet_xray.train.finetune import FinetuneOptions


def test_finetune_batch_size_one_is_refused_unless_batchnorm_is_frozen():
    with pytest.raises(XrayError, match="batch_size 1: BatchNorm"):
        FinetuneOptions(arch="resnet18", batch_size=1).validate()
    FinetuneOptions(arch="resnet18", batch_size=1, freeze="backbone").validate()


@pytest.mark.parametrize("kw, flag", [({"steps": 0}, "steps 0"), ({"batch_size": 1}, "batch.size 1")])
def test_bench_data_refuses_values_that_crashed(tmp_path, kw, flag):
    from resnet_xray.train.bench import DataBenchOptions, bench_data

    with pytest.raises(XrayError, match=flag):
        bench_data(tmp_path, DataBenchOptions(arch="resnet18", **kw))
