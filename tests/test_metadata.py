"""The erasure's typed metadata: written as named fields with a format number, read back the same, and files of
format 1 (positional step rows, the keep projection as a sentence) still load into the same record."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unlearn_core.concepts import parse_concept_text
from unlearn_core.erasure import METADATA_KEY, DamagedErasureError, Erasure
from unlearn_core.metadata import (FORMAT, ErasureMetadata, Projection, ProjectionRecord, StepRecord, Stop,
                                   step_record)
from unlearn_core.steps import StepInfo
from unlearn_core.trainer import EraseConfig, erase
from unlearn_demo.flow_model import FlowDemoDenoiser, FlowDemoModel

FORMAT1_FILE = Path(__file__).parent / "data" / "flow_demo_erasure_format1.safetensors"
# how that file was made, by the pack before its metadata was typed (the flow demo model, 10 steps)
FORMAT1_CONCEPTS = ("a red circle -> a red shape\na blue circle -> a blue shape\nkeep: a blue square\n"
                    "keep: a green triangle")
FORMAT1_CONFIG = EraseConfig(resolution=64, num_samples=4, sample_steps=4, batch_size=2, steps=10, lora_rank=4,
                             grad_accumulation=2, log_every=3)


def test_a_record_round_trips_through_the_header_with_named_fields(tmp_path):
    meta = ErasureMetadata(family="SD15", key_format="ldm", stop=Stop.ERASED, stopped="erase_until 110% reached",
                           history=[StepRecord(10, 0.5, 2.0, None, 0.1, 1.2, 0.0, 0.9), StepRecord(11, 0.4, 1.9)],
                           keep_projection=ProjectionRecord(Projection.APPLIED, "8 tensors", 8, 23, 768, (0.5, 0.7)),
                           config=EraseConfig(steps=400), extra={"from_a_newer_writer": [1, 2]})
    path = Erasure(full={"w": torch.ones(2)}, shapes={"w": (2,)}, metadata=meta).save(tmp_path / "e.safetensors")
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()[METADATA_KEY])
    assert header["format"] == FORMAT == 2
    assert header["history"]["step"] == [10, 11] and header["history"]["moved"] == [1.2, None]
    assert header["keep_projection"]["status"] == "applied" and header["stop"] == "erase_until"
    assert Erasure.load(path).metadata == meta
    assert ErasureMetadata.from_json(meta.to_json()) == meta  # in memory too, without the JSON text between


def test_a_newer_format_is_refused_and_odd_values_load_as_unrecorded(tmp_path):
    erasure = Erasure(full={"w": torch.ones(2)}, shapes={"w": (2,)})
    tensors, header = erasure.to_state_dict()
    meta = json.loads(header[METADATA_KEY])
    path = tmp_path / "newer.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(dict(meta, format=3))})
    with pytest.raises(DamagedErasureError, match="of format 3, written by a newer Divergence Unlearn"):
        Erasure.load(path)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(dict(
        meta, keep_projection={"status": None}, key_format=None, history={"step": [1], "loss": [float("nan")]}))})
    loaded = Erasure.load(path)
    assert loaded.metadata.keep_projection.status == Projection.UNRECORDED and loaded.metadata.key_format == ""
    assert loaded.metadata.history == [StepRecord(1, None, None)]
    assert Erasure.load(loaded.save(tmp_path / "again.safetensors")).metadata == loaded.metadata


def test_settings_of_another_version_are_kept_as_they_were(tmp_path):
    """A config that is not today's EraseConfig (a setting missing or added, a value out of range) is no typed config,
    and is written back unchanged; the report then measures "moved" with no aim."""
    erasure = Erasure(full={"w": torch.ones(2)}, shapes={"w": (2,)})
    tensors, header = erasure.to_state_dict()
    meta = json.loads(header[METADATA_KEY])
    older = {k: v for k, v in asdict(EraseConfig()).items() if k != "erase_mode"}
    for config in (older, {**asdict(EraseConfig()), "steps": -3}):
        path = tmp_path / "other.safetensors"
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(dict(meta, config=config))})
        loaded = Erasure.load(path)
        assert loaded.metadata.config is None and loaded.metadata.extra["config"] == config
        assert loaded.metadata.to_json()["config"] == config
    typed = Erasure.load(Erasure(full={"w": torch.ones(2)}, shapes={"w": (2,)},
                                 metadata=ErasureMetadata(config=EraseConfig(steps=7))).save(tmp_path / "t.safetensors"))
    assert typed.metadata.config == EraseConfig(steps=7) and "config" not in typed.metadata.extra


def test_a_format1_file_loads_into_the_typed_record():
    meta = Erasure.load(FORMAT1_FILE).metadata
    assert (meta.family, meta.key_format, meta.prediction_type) == ("flux-demo", "ldm", "flow")
    assert [r.step for r in meta.history] == [3, 6, 9, 10]  # log_every 3, and the last step
    assert all(r.moved is None for r in meta.history[:-1]) and meta.history[-1].moved is not None  # checked last
    assert meta.stop == Stop.CAP and meta.capped and meta.stopped.startswith("WARNING: erase_until 120%")
    assert meta.keep_projection.status == Projection.NOT_APPLICABLE
    assert meta.keep_projection.note.startswith("not applicable: parameter set 'cross_attn_kv'")
    assert meta.config == replace(FORMAT1_CONFIG, guidance_eta=1.0, sigma=1.0, precision="model_dtype", erase_until=1.2)  # resolved


def test_the_engine_makes_the_format1_files_erasure_again(tmp_path):
    """The trainer's refactor changed no arithmetic: the same settings give the same updates as the file's."""
    old = Erasure.load(FORMAT1_FILE)
    new = erase(FlowDemoDenoiser(FlowDemoModel.load()), parse_concept_text(FORMAT1_CONCEPTS), FORMAT1_CONFIG)
    assert new.names == old.names
    for name in new.names:  # bit for bit on one machine; a tolerance for other CPUs' summation orders
        torch.testing.assert_close(new.delta(name), old.delta(name), rtol=1e-4, atol=1e-7)
    assert [r.step for r in new.metadata.history] == [r.step for r in old.metadata.history]
    assert (new.metadata.stop, new.metadata.stopped) == (old.metadata.stop, old.metadata.stopped)
    assert new.metadata.config == old.metadata.config
    resaved = Erasure.load(old.save(tmp_path / "again.safetensors"))
    assert resaved.metadata == old.metadata  # a format-1 file saved again is read back the same


def test_a_logged_step_records_its_unmeasured_values_as_none():
    """StepInfo holds NaN where a step measured nothing (no keep prompts, not a check step) and an fp16 step that
    overflowed logs an infinite gradient norm; JSON has neither, and the record holds what the file will."""
    record = step_record(StepInfo("training", 3, 10, loss=0.5, mean_s=0.2, grad_norm=math.inf, moved=1.1))
    assert record == StepRecord(3, 0.5, 0.2, keep_s=None, grad_norm=None, moved=1.1, drift=None, progress=None)
