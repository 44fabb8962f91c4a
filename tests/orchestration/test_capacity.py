"""`geosurge plan`'s arithmetic: each stage's time is its slowest resource, GPU-hours are the GPUs it holds for that
time, bytes follow the table; and the one rate table says where every number came from."""

import argparse
import dataclasses

import pytest

from geosurge.config import load_config
from geosurge.orchestration.capacity import (
    RATES_FILE,
    Cluster,
    Rates,
    add_plan_arguments,
    checkpoint_bytes,
    plan_command,
    plan_pipeline,
    train_gflop_per_image,
)
from tests.infra.infra_helpers import REPO


def _row(value: float) -> dict:
    return {"value": value, "unit": "u", "kind": "measured", "source": "test"}


def round_rates(**overrides) -> Rates:
    """A table with round numbers, so each figure below can be worked out by hand."""
    table = {
        "cpu": {"decode_resize_per_cpu_s": _row(2.0), "encode_shard_jpeg_per_cpu_s": _row(2.0),  # 1 CPU-s / image
                "decode_shard_jpeg_per_cpu_s": _row(1000.0), "geocells_build_s_per_million_images": _row(3600.0)},
        "data": {"mp16_images": _row(3600), "source_bytes_per_image": _row(125_000),  # 1 Mbit
                 "shard_bytes_per_image": _row(1000), "geocells_per_million_images": _row(1000),
                 "geocell_row_bytes": _row(100), "prediction_row_bytes": _row(10), "network_gbps": _row(1.0)},
        "flops": {"vit_l14_336_forward_gflop": _row(100.0), "vit_l14_336_block_forward_gflop": _row(10.0),
                  "oneformer_swin_l_336_forward_gflop": _row(360.0), "vit_l14_block_params_m": _row(1.0),
                  "vit_l14_params_m": _row(24.0)},
        "gpus": {"g1": {"tflops": 1.0, "source": "test"}},
        "utilisation": {"train": _row(0.5), "segment": _row(0.1), "evaluate": _row(1.0)},
        "paper": {"gpus": 1, "gpu": "g1", "hours": 1.0},
        "benchmarks": {"default": {"images": 100}, "bench_a": {"images": 36}},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        table[section][name] = _row(value)
    return Rates(table)


def round_config(*overrides: str):
    return load_config(overrides=["ingest.image_size=336", "ingest.segmenter=someone/oneformer",
                                  "ingest.segment_actors=1", "ingest.gpus_per_segment_actor=1",
                                  "model.trainable_blocks=2", "model.fusion=true", "model.fusion_blocks=1",
                                  "model.embed_dim=10", "train.num_workers=2", "train.epochs=3",
                                  "train.checkpoints_to_keep=1", "data.val_fraction=0.0", "eval.ten_crop=false",
                                  "eval.actors=1", "eval.gpus_per_actor=1",
                                  "eval.benchmarks=[{name: bench_a, manifest: s3://b/a.csv}]", *overrides])


def test_ingest_is_as_slow_as_its_slowest_resource_and_writes_a_shard_row_per_image():
    config, rates = round_config(), round_rates()
    plan = plan_pipeline(config, Cluster(gpus=2, gpu="g1", cpus=4, network_gbps=1.0), rates, images=3600)
    ingest = plan.stage("ingest+segment")
    # 3600 images × 1 Mbit at 1 Gbit/s = 3.6 s; × 1 CPU-s over 4 CPUs = 900 s; × 360 GFLOP on 1 GPU at
    # 1 TFLOP/s × 0.1 = 100 GFLOP/s: 12,960 s
    assert ingest.limits_h == pytest.approx({"download": 3.6 / 3600, "cpu decode": 900 / 3600,
                                             "gpu segment": 12_960 / 3600})
    assert ingest.bottleneck == "gpu segment" and ingest.hours == pytest.approx(3.6)
    assert ingest.gpus_held == 1 and ingest.gpu_hours == pytest.approx(3.6)  # one actor: one GPU of two
    assert "1 of 2 GPUs" in ingest.note
    assert ingest.bytes_written == 3600 * 1000
    # more segmentation actors, the CPU becomes the limit; a slow link, the download does
    wide = plan_pipeline(round_config("ingest.segment_actors=2"), Cluster(2, "g1", 4, 1.0),
                         round_rates(flops__oneformer_swin_l_336_forward_gflop=0.01), images=3600)
    assert wide.stage("ingest+segment").bottleneck == "cpu decode" and wide.stage("ingest+segment").gpus_held == 2
    slow = plan_pipeline(config, Cluster(2, "g1", 4, 1e-5), round_rates(), images=3600)
    assert slow.stage("ingest+segment").bottleneck == "download"
    # no model at ingest, no GPU held
    oracle = plan_pipeline(round_config("ingest.segmenter=ground_truth"), Cluster(2, "g1", 4, 1.0), rates, 3600)
    assert oracle.stage("ingest+segment").gpus_held == 0 and oracle.stage("ingest+segment").gpu_hours == 0


def test_training_costs_forward_everywhere_and_backward_only_where_it_trains():
    config, rates = round_config(), round_rates()
    # forward 100 + 1 fusion block 10; backward 2 × (2 trainable blocks × 10 + fusion 10) = 60
    assert train_gflop_per_image(config, rates) == pytest.approx(170.0)
    whole = round_config("model.trainable_blocks=null")  # the whole backbone trains: backward 2 × (100 + 10)
    assert train_gflop_per_image(whole, rates) == pytest.approx(330.0)
    assert train_gflop_per_image(round_config("ingest.image_size=672"), rates) == pytest.approx(4 * 170.0)
    plan = plan_pipeline(config, Cluster(gpus=2, gpu="g1", cpus=4, network_gbps=1.0), rates, images=3600)
    train = plan.stage("train (3 epochs)")
    # 3 epochs × 3600 images × 170 GFLOP over 2 workers at 1 TFLOP/s × 0.5 = 1000 GFLOP/s together: 1836 s
    assert train.limits_h["gpu train"] == pytest.approx(3 * 3600 * 170 / 1000 / 3600)
    assert train.bottleneck == "gpu train" and train.gpus_held == 2
    assert train.gpu_hours == pytest.approx(2 * train.hours)
    # a checkpoint: 24 + 1 fusion = 25 M weights + 3600 / 1e6 × 1000 cells × 10 dims in bf16, and 12 B for each
    # of the 2 + 1 = 3 M trainable weights and the cells (fp32 master, two Adam moments)
    cells = 3600 / 1e6 * 1000 * 10
    one = (25e6 + cells) * 2 + (3e6 + cells) * 12
    assert checkpoint_bytes(config, rates, 3600) == pytest.approx(one)
    assert train.bytes_written == pytest.approx(3 * one)  # one per epoch
    assert "2 kept" in train.note


def test_geocells_eval_and_totals():
    config, rates = round_config(), round_rates()
    plan = plan_pipeline(config, Cluster(gpus=2, gpu="g1", cpus=4, network_gbps=1.0), rates, images=3600)
    geocells = plan.stage("geocells")
    assert geocells.hours == pytest.approx(3600 / 1e6 * 3600 / 3600) and geocells.gpu_hours == 0
    # 36 images × 2 models × (100 + 10) + one segmentation (360) each, on 1 GPU at 1000 GFLOP/s
    ev = plan.stage("eval")
    assert ev.hours == pytest.approx(36 * (2 * 110 + 360) / 1000 / 3600) and ev.gpus_held == 1
    ten_crop = plan_pipeline(round_config("eval.ten_crop=true"), Cluster(2, "g1", 4, 1.0), rates, 3600)
    assert ten_crop.stage("eval").hours == pytest.approx(36 * (20 * 110 + 360) / 1000 / 3600)
    assert plan.hours == pytest.approx(sum(s.hours for s in plan.stages))
    assert plan.gpu_hours == pytest.approx(sum(s.gpu_hours for s in plan.stages))
    # validation rows come out of the training images and are only run forward
    held_out = plan_pipeline(round_config("data.val_fraction=0.5"), Cluster(2, "g1", 4, 1.0), rates, 3600)
    assert held_out.train_images == 1800
    assert held_out.stage("train (3 epochs)").limits_h["gpu train"] == pytest.approx(
        3 * (1800 * 170 + 1800 * 110) / 1000 / 3600)


def test_a_cluster_the_config_cannot_run_on_is_refused_with_what_to_change(capsys):
    config, rates = round_config(), round_rates()
    with pytest.raises(ValueError, match=r"train.num_workers=2 needs 2 GPUs and the cluster has 1.*--set "
                                         r"train.num_workers=1"):
        plan_pipeline(config, Cluster(gpus=1, gpu="g1", cpus=4, network_gbps=1.0), rates, images=3600)
    with pytest.raises(ValueError, match="no rate for GPU 'tpu'"):
        plan_pipeline(config, Cluster(gpus=2, gpu="tpu", cpus=4, network_gbps=1.0), rates, images=3600)
    with pytest.raises(ValueError, match="at least one GPU"):
        Cluster(gpus=0, gpu="g1", cpus=4, network_gbps=1.0)
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    mp16 = load_config([str(REPO / "configs" / "geosurge-mp16.yaml")])
    assert plan_command(mp16, parser.parse_args(["--gpus", "4"])) == 2
    assert "needs 8 GPUs and the cluster has 4" in capsys.readouterr().out


def test_the_rate_table_names_how_every_rate_was_obtained():
    rates = Rates.load()
    for section, rows in rates.table.items():
        if section in ("gpus", "paper", "benchmarks"):
            continue
        for name, row in rows.items():
            assert set(row) == {"value", "unit", "kind", "source"}, f"{section}.{name}"
            assert row["kind"] in ("measured", "published", "estimate") and len(row["source"]) > 10
            assert float(row["value"]) > 0
    assert all(g["tflops"] > 0 and "datasheet" in g["source"] for g in rates.table["gpus"].values())
    assert rates.table["paper"] == {"gpus": 8, "gpu": "a6000", "hours": 21.0}  # design.md 1.1
    # the utilisations are assumptions, and the table says so
    assert {f"utilisation.{k}" for k in rates.table["utilisation"]} <= set(rates.estimates())
    assert RATES_FILE.parent.name == "orchestration"


def test_plan_of_the_papers_preset_on_eight_h100s_prints_every_stage_and_the_papers_run(capsys):
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    config = load_config([str(REPO / "configs" / "geosurge-mp16.yaml")])
    assert plan_command(config, parser.parse_args(["--gpus", "8", "--gpu", "h100", "--cpus", "256"])) == 0
    out = capsys.readouterr().out
    for stage in ("ingest+segment", "geocells", "train (10 epochs)", "eval", "total"):
        assert f"\n{stage}" in out, out
    assert "4,720,000 images" in out and "paper: 8 × a6000 trained for 21 h" in out
    plan = plan_pipeline(config, Cluster(8, "h100", 256, 10.0), Rates.load(), 4_720_000)
    a6000 = plan_pipeline(config, Cluster(8, "a6000", 256, 10.0), Rates.load(), 4_720_000)
    # the same work on slower GPUs takes longer by their peak ratio
    ratio = a6000.stage("train (10 epochs)").hours / plan.stage("train (10 epochs)").hours
    assert ratio == pytest.approx(989.0 / 154.8)
    assert dataclasses.replace(plan.cluster, gpus=8) == plan.cluster
