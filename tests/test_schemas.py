"""Versioned run files: model.json, eval_results.json and export.json carry "schema_version"; each has
one reader (base.artifacts) that migrates files written before the field (version 1) and refuses a
newer version in one line naming the file."""
from __future__ import annotations

import json
import pathlib

import pytest

from unet_medical.base import artifacts
from unet_medical.base.artifacts import (EVAL_RESULTS, EXPORT_JSON, MODEL_JSON, SCHEMA_KEY, SCHEMA_VERSION,
                                         RunRecord, load_run_record, read_eval_results, read_export_document,
                                         save_run_record, write_eval_results)
from unet_medical.base.errors import UNetError

SPEC = {"padding": "same", "base_filters": 4, "depth": 2, "batch_norm": True, "dropout": 0.0}
QUANTIZATION = {"quantization": "FIXED", "weight_i_width": 0, "weight_f_width": 4}
# Version 1 files, as the code before schema_version wrote them.
MODEL_V1 = {"spec": SPEC, "class_names": ["background", "membrane"], "architecture": None,
            "quantization": "FIXED", "quantization_config": QUANTIZATION, "step": 4, "normalization": "global",
            "image_dtype": "uint8", "precision": "float32", "input_scale": 1.0, "volume": None,
            "train_files": ["a.png"], "validation_files": ["b.png"]}
MODEL_EARLIEST = {"spec": SPEC, "class_names": ["background", "membrane"], "quantization": "FIXED",
                  "extra": {"quantization_config": QUANTIZATION, "normalization": "per_image"}}
EVAL_V1 = {"mean_dice": 0.75, "membrane_dice": 0.7, "fold": 0, "num_folds": 5, "step": 4, "num_images": 2,
           "tta": False, "per_case": []}
EXPORT_V1 = {"artifacts": {"model_fp32.onnx": {"format": "onnx", "precision": "fp32", "file": "model_fp32.onnx",
                                               "spec": SPEC, "class_names": ["background", "membrane"]}},
             "selection": {"chosen": "model_fp32.onnx"}}


def write(path: pathlib.Path, document: dict) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def test_a_version_1_model_json_loads(tmp_path):
    write(tmp_path / MODEL_JSON, MODEL_V1)
    record = load_run_record(tmp_path)
    assert record.quantization_config == QUANTIZATION and record.train_files == ["a.png"] and record.step == 4


def test_the_earliest_model_json_with_extra_is_migrated(tmp_path):
    write(tmp_path / MODEL_JSON, MODEL_EARLIEST)
    migrated = artifacts.read_model_json(tmp_path)
    assert "extra" not in migrated and migrated["quantization_config"] == QUANTIZATION
    assert load_run_record(tmp_path).normalization == "per_image"


def test_version_1_eval_results_and_export_json_load(tmp_path):
    assert read_eval_results(write(tmp_path / EVAL_RESULTS, EVAL_V1)) == EVAL_V1
    assert read_export_document(write(tmp_path / EXPORT_JSON, EXPORT_V1)) == EXPORT_V1


def test_the_writers_write_the_current_version_and_the_readers_read_it_back(tmp_path):
    record = RunRecord(spec=SPEC, class_names=("background", "membrane"), quantization="FIXED",
                       quantization_config=QUANTIZATION, train_files=["a.png"])
    save_run_record(tmp_path, record)
    assert json.loads((tmp_path / MODEL_JSON).read_text())[SCHEMA_KEY] == SCHEMA_VERSION == 2
    assert load_run_record(tmp_path) == record
    write_eval_results(tmp_path / EVAL_RESULTS, EVAL_V1)
    assert json.loads((tmp_path / EVAL_RESULTS).read_text())[SCHEMA_KEY] == SCHEMA_VERSION
    assert read_eval_results(tmp_path / EVAL_RESULTS) == EVAL_V1  # the version describes the file, not the scores


def test_export_json_is_written_at_the_current_version_and_read_by_the_runtimes(tmp_path):
    from unet_medical.export.formats import read_export_json, record_artifact, record_selection
    from unet_medical.inference.runtimes import read_metadata, resolve_deploy_file

    entry = EXPORT_V1["artifacts"]["model_fp32.onnx"]
    record_artifact(tmp_path, entry)
    record_selection(tmp_path, {"chosen": "model_fp32.onnx"})
    assert json.loads((tmp_path / EXPORT_JSON).read_text())[SCHEMA_KEY] == SCHEMA_VERSION
    assert read_export_json(tmp_path / EXPORT_JSON) == {"model_fp32.onnx": entry}
    assert read_metadata(tmp_path / "model_fp32.onnx") == entry
    assert resolve_deploy_file(tmp_path) == tmp_path / "model_fp32.onnx"


@pytest.mark.parametrize("name, document, read", [
    (MODEL_JSON, MODEL_V1, lambda path: load_run_record(path.parent)),
    (EVAL_RESULTS, EVAL_V1, read_eval_results),
    (EXPORT_JSON, EXPORT_V1, read_export_document),
])
def test_a_newer_version_is_refused_in_one_line_naming_the_file(tmp_path, name, document, read):
    path = write(tmp_path / name, {**document, SCHEMA_KEY: SCHEMA_VERSION + 1})
    with pytest.raises(UNetError) as caught:
        read(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert f"{SCHEMA_KEY} {SCHEMA_VERSION + 1} is newer" in message and "upgrade unet_medical" in message


@pytest.mark.parametrize("version", ["2", 0, True, None])
def test_a_version_that_is_not_a_number_is_refused(tmp_path, version):
    path = write(tmp_path / EVAL_RESULTS, {**EVAL_V1, SCHEMA_KEY: version})
    with pytest.raises(UNetError, match=f"{EVAL_RESULTS}: {SCHEMA_KEY} .* is not a version number"):
        read_eval_results(path)


def test_the_cv_summary_reads_old_and_new_fold_results_alike(tmp_path):
    from unet_medical.evaluation.cv import read_fold_results

    write(tmp_path / "fold_0" / EVAL_RESULTS, {**EVAL_V1, "fold": 0, "num_folds": 2})
    write_eval_results(tmp_path / "fold_1" / EVAL_RESULTS, {**EVAL_V1, "fold": 1, "num_folds": 2})
    results = read_fold_results(tmp_path)
    assert SCHEMA_KEY not in results[1] and results[0]["mean_dice"] == results[1]["mean_dice"]
