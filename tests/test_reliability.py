"""Hostile and careless input: nothing overwritten, nothing silently ignored, no input that hangs or leaks.

Fuzzing (hypothesis) of the concept-set parser and the erasure loader, concurrent saves from threads
and processes, a ``kill -9`` in the middle of a large save, NaN / inf files and strengths, and the
bombs (aliases, nesting, products) with generous time and memory limits measured in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from unlearn_core.atomic_write import write_atomically
from unlearn_core.concepts import ConceptSet, ConceptSetError, load_concept_file, parse_concept_text
from unlearn_core.erasure import METADATA_KEY, DamagedErasureError, Erasure, ErasureError
from unlearn_core.metadata import ErasureMetadata, StepRecord

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def small_erasure(marker: str = "") -> Erasure:
    """One full and one low-rank update, with a marker in the metadata to recognise the file by."""
    return Erasure(full={"in.bias": torch.arange(3.0)},
                   lora={"attn.to_k.weight": (torch.ones(4, 2), torch.full((2, 3), 0.5), 2.0)},
                   shapes={"in.bias": (3,), "attn.to_k.weight": (4, 3)},
                   metadata=ErasureMetadata(key_format="ldm", family="SD15", history=[StepRecord(1, 0.5, None)],
                                            extra={"marker": marker}))


def write_raw(path: Path, tensors: dict[str, torch.Tensor], meta_text: str) -> Path:
    save_file(tensors, str(path), metadata={METADATA_KEY: meta_text})
    return path


def loads_or_refuses(path: Path) -> Erasure | None:
    """The loaded erasure, or None when refused with our clear error (any other exception fails the test)."""
    try:
        erasure = Erasure.load(path)
    except ErasureError as e:
        assert len(str(e)) < 2000
        return None
    for name in erasure.names:  # whatever loads is whole: finite and of its recorded shape
        delta = erasure.delta(name)
        assert tuple(delta.shape) == erasure.shapes[name] and torch.isfinite(delta).all()
    return erasure


# --------------------------------------------------------------------------- erasure loader


@FUZZ
@given(field=st.sampled_from(["names", "shapes", "key_format", "family", "history", "seconds", "concepts",
                              "config", "low_rank", "fingerprint", "version", "format", "stop", "stopped",
                              "keep_projection", "sigma_auto"]), value=JSON_VALUES)
def test_fuzzed_metadata_field_loads_or_is_refused_clearly(tmp_path, field, value):
    tensors, header = small_erasure().to_state_dict()
    meta = json.loads(header[METADATA_KEY])
    meta[field] = value
    loads_or_refuses(write_raw(tmp_path / "e.safetensors", tensors, json.dumps(meta)))


@FUZZ
@given(key=st.sampled_from(sorted(small_erasure().to_state_dict()[0])), drop=st.booleans(),
       shape=st.lists(st.integers(0, 5), max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.uint8]),
       fill=st.floats(allow_nan=True, allow_infinity=True, width=16))
def test_fuzzed_tensor_loads_or_is_refused_clearly(tmp_path, key, drop, shape, dtype, fill):
    tensors, header = small_erasure().to_state_dict()
    if drop:
        del tensors[key]
    else:
        tensors[key] = torch.full(shape, fill if dtype.is_floating_point else 1).to(dtype)
    loads_or_refuses(write_raw(tmp_path / "e.safetensors", tensors, header[METADATA_KEY]))


@FUZZ
@given(meta_text=st.text(max_size=200) | st.builds(lambda n: "[" * n + "]" * n, st.integers(0, 5000)))
def test_fuzzed_metadata_text_is_refused_clearly(tmp_path, meta_text):
    tensors, _ = small_erasure().to_state_dict()
    loads_or_refuses(write_raw(tmp_path / "e.safetensors", tensors, meta_text))


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_are_refused_clearly(tmp_path, data):
    path = tmp_path / "e.safetensors"
    path.write_bytes(data)
    with pytest.raises(ErasureError):
        Erasure.load(path)


def malformed(tensors: dict, meta: dict, case: str) -> tuple[dict, dict]:
    """One malformation each of the kinds that used to escape as a torch or Python error."""
    up, down = "lora_unet_attn_to_k.lora_up.weight", "lora_unet_attn_to_k.lora_down.weight"
    if case == "rank 0":
        tensors[up], tensors[down] = torch.ones(4, 0), torch.ones(0, 3)
    elif case == "1-D up":
        tensors[up] = torch.ones(4)
    elif case == "wrong rows":
        tensors[up] = torch.ones(5, 2)
    elif case == "shape other than recorded":
        tensors["lora_unet_in.diff_b"] = torch.ones(4)
    elif case == "NaN delta":
        tensors["lora_unet_in.diff_b"] = torch.tensor([0.0, math.nan, 1.0])
    elif case == "inf alpha":
        tensors["lora_unet_attn_to_k.alpha"] = torch.tensor(math.inf)
    elif case == "integer tensor":
        tensors["lora_unet_in.diff_b"] = torch.ones(3, dtype=torch.int64)
    elif case == "names not a mapping":
        meta["names"] = ["x"]
    elif case == "shapes missing":
        del meta["shapes"]
    elif case == "unknown tensor":
        tensors["lora_unet_other.diff"] = torch.ones(2)
    elif case == "unknown stop":
        meta["stop"] = "finished"
    elif case == "ragged history":
        meta["history"] = {"step": [1, 2], "loss": [0.5]}
    elif case == "projection a list":
        meta["keep_projection"] = ["applied"]
    return tensors, meta


@pytest.mark.parametrize("case", ["rank 0", "1-D up", "wrong rows", "shape other than recorded", "NaN delta",
                                  "inf alpha", "integer tensor", "names not a mapping", "shapes missing",
                                  "unknown tensor", "unknown stop", "ragged history", "projection a list"])
def test_malformed_file_is_one_clear_damaged_error(tmp_path, case):
    tensors, header = small_erasure().to_state_dict()
    tensors, meta = malformed(tensors, json.loads(header[METADATA_KEY]), case)
    path = write_raw(tmp_path / "e.safetensors", tensors, json.dumps(meta))
    with pytest.raises(DamagedErasureError, match=r"^e\.safetensors: this erasure file is damaged: "):
        Erasure.load(path)


def test_header_is_strict_json_and_files_with_nan_in_their_header_still_load(tmp_path):
    erasure = small_erasure()
    erasure.metadata.history = [StepRecord(1, 0.5, math.nan, math.inf)]
    path = erasure.save(tmp_path / "strict.safetensors")
    with safe_open(str(path), "pt") as f:
        text = f.metadata()[METADATA_KEY]
    strict = json.loads(text,
                        parse_constant=lambda c: pytest.fail(f"{c} in the saved header"))
    assert (strict["history"]["step"], strict["history"]["mean_s"], strict["history"]["keep_s"]) == ([1], [None], [None])
    tensors, text = erasure.to_state_dict()
    old = dict(json.loads(text[METADATA_KEY]), history=[[1, math.nan]])  # as format 1 wrote it
    del old["format"]
    assert "NaN" in json.dumps(old)
    loaded = Erasure.load(write_raw(tmp_path / "old.safetensors", tensors, json.dumps(old)))
    assert loaded.metadata.history[0].loss is None  # read as the strict header writes it


# --------------------------------------------------------------------------- saving


def test_saves_get_the_umask_mode_and_leave_no_temporary_file(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    path = small_erasure().save_numbered(tmp_path, "mode")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == [path.name]


def test_a_failed_write_leaves_nothing_and_keeps_the_existing_file(tmp_path):
    target = tmp_path / "kept.safetensors"
    target.write_bytes(b"old")

    def fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail)
    assert os.listdir(tmp_path) == ["kept.safetensors"] and target.read_bytes() == b"old"


def saved_markers(folder: Path) -> list[str]:
    """The marker of every erasure file in ``folder``; each must load (intact)."""
    return sorted(Erasure.load(p).metadata.extra["marker"] for p in folder.glob("*.safetensors"))


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard links", "no hard links"])
def test_threads_saving_with_one_prefix_lose_nothing(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # a file system like exFAT: the exclusive-create fallback must hold as well
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(PermissionError(1, "no links")))
    barrier = threading.Barrier(8)

    def saver(i: int) -> None:
        barrier.wait()
        for j in range(4):
            small_erasure(f"{i}-{j}").save_numbered(tmp_path, "same")

    threads = [threading.Thread(target=saver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert saved_markers(tmp_path) == sorted(f"{i}-{j}" for i in range(8) for j in range(4))
    assert not [n for n in os.listdir(tmp_path) if not n.endswith(".safetensors")], "a temporary file was left"


SAVER = """
import shutil, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from unlearn_core.atomic_write import write_numbered  # no torch: the processes start fast and overlap
folder, blobs = Path(sys.argv[2]), sorted(Path(sys.argv[3]).glob(sys.argv[4] + "-*"))
(folder.parent / f"ready-{sys.argv[4]}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
for blob in blobs:
    write_numbered(folder, "same", ".safetensors", lambda tmp: shutil.copyfile(blob, tmp))
"""


def test_processes_saving_with_one_prefix_lose_nothing(tmp_path):
    """Three processes each save eight erasures (serialised here, so that they need not import torch)."""
    folder, blobs = tmp_path / "loras", tmp_path / "blobs"
    folder.mkdir(), blobs.mkdir()
    for i in range(3):
        for j in range(8):
            small_erasure(f"{i}-{j}").save(blobs / f"{i}-{j}.safetensors")
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(ROOT), str(folder), str(blobs), str(i)])
             for i in range(3)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3:  # every process imported and waiting: then they start together
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a saver did not start"
        time.sleep(0.01)
    (folder / "go").touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    assert saved_markers(folder) == sorted(f"{i}-{j}" for i in range(3) for j in range(8))


# --------------------------------------------------------------------------- concept sets


TEXT_PIECES = st.sampled_from(["->", "→", "keep:", "Template:", "preset:", "preset: object", "#", " # x", "{}",
                               "{}{}", "\n", " ", "Van Gogh", ",", "\ufeff", "\x00", "\r", "é"])


@FUZZ
@given(text=st.text(max_size=200) | st.lists(TEXT_PIECES, max_size=30).map("".join))
def test_fuzzed_concept_text_parses_or_is_refused_clearly(text):
    try:
        concepts = parse_concept_text(text)
    except ConceptSetError:
        return
    assert concepts.pairs and concepts.expanded_count() == len(concepts.prompt_pairs())
    assert concepts.summary()


@FUZZ
@given(data=st.dictionaries(st.sampled_from(["name", "pairs", "keep", "templates", "presets", "other"]),
                            JSON_VALUES | st.lists(st.text(max_size=20) | JSON_VALUES, max_size=4), max_size=5)
       | JSON_VALUES)
def test_fuzzed_concept_mapping_parses_or_is_refused_clearly(data):
    try:
        ConceptSet.from_dict(data)
    except ConceptSetError as e:
        assert len(str(e)) < 2000


@FUZZ
@given(ext=st.sampled_from([".txt", ".json", ".yaml"]), data=st.binary(max_size=300)
       | st.text(max_size=200).map(str.encode))
def test_fuzzed_concept_file_loads_or_is_refused_clearly(tmp_path, ext, data):
    path = tmp_path / f"set{ext}"
    path.write_bytes(data)
    try:
        load_concept_file(path)
    except ConceptSetError as e:
        assert str(path) in str(e)


def test_concept_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Café -> a painting\n".encode("latin-1"))
    with pytest.raises(ConceptSetError, match=r"latin1\.txt: not UTF-8 text \(byte 3 is 0xe9\)"):
        load_concept_file(path)


def test_concept_file_over_the_size_limit_is_refused(tmp_path):
    path = tmp_path / "huge.txt"
    path.write_text("a -> b\n" * 200_000)
    with pytest.raises(ConceptSetError, match=r"huge\.txt: larger than 1024 KiB"):
        load_concept_file(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_concept_file_that_is_a_pipe_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.txt"
    os.mkfifo(path)
    result = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(ConceptSetError, load_concept_file, path)),
                              daemon=True)
    reader.start()
    reader.join(timeout=60)  # generous: a blocking open never returns at all
    assert not reader.is_alive(), "reading a named pipe blocked"
    assert "not a regular file" in str(result[0].value)


# --------------------------------------------------------------------------- bombs, measured in a subprocess

BOMBS = r"""
import json, sys, time, tracemalloc
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from safetensors.torch import save_file
from unlearn_core.concepts import load_concept_file, parse_concept_text
from unlearn_core.erasure import METADATA_KEY, Erasure

folder = Path(sys.argv[2])
levels = ["lol: &a0 [x, x, x, x, x, x, x, x, x]"]
levels += [f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
(folder / "alias.yaml").write_text("\n".join(levels) + "\npairs: [*a8]\n")
(folder / "deep.json").write_text("[" * 100_000)
(folder / "deep.yaml").write_text("pairs: " + "[" * 1000 + "]" * 1000 + "\n")
(folder / "big.txt").write_text("a -> b\n" * 200_000)
product = "".join(f"target {i} -> anchor {i}\n" for i in range(3000))
product += "".join(f"template: style {i} of {{}}\n" for i in range(3000))
save_file({"x": torch.zeros(1)}, str(folder / "deep.safetensors"),
          metadata={METADATA_KEY: '{"names": ' + "[" * 100_000})
bombs = {
    "yaml alias bomb": lambda: load_concept_file(folder / "alias.yaml"),
    "json nesting": lambda: load_concept_file(folder / "deep.json"),
    "yaml nesting": lambda: load_concept_file(folder / "deep.yaml"),
    "file over the limit": lambda: load_concept_file(folder / "big.txt"),
    "3000 x 3000 summary": lambda: parse_concept_text(product).summary(),
    "nested erasure metadata": lambda: Erasure.load(folder / "deep.safetensors"),
}
out = {}
for name, bomb in bombs.items():
    start = time.perf_counter()
    try:
        result = bomb()
        error, message = None, result
    except Exception as e:
        error, message = type(e).__name__, str(e)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        bomb()
    except Exception:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out[name] = {"seconds": seconds, "peak_mb": peak / 2**20, "error": error, "message_chars": len(message),
                 "message_head": message[:200],
                 "input_bytes": (folder / "alias.yaml").stat().st_size if "alias" in name else None}
print(json.dumps(out))
"""


def test_bombs_are_refused_fast_with_little_memory_and_short_messages(tmp_path):
    done = subprocess.run([sys.executable, "-c", BOMBS, str(ROOT), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    print(json.dumps(results, indent=1))
    for name, r in results.items():
        assert r["seconds"] < 1.0 and r["peak_mb"] < 100, (name, r)
    for name in ("yaml alias bomb", "json nesting", "yaml nesting", "file over the limit"):
        assert results[name]["error"] == "ConceptSetError" and results[name]["message_chars"] < 500, name
    assert results["yaml alias bomb"]["input_bytes"] < 1000
    assert results["nested erasure metadata"]["error"] == "DamagedErasureError"
    assert "9000000 expanded prompt pair(s)" in results["3000 x 3000 summary"]["message_head"]


# --------------------------------------------------------------------------- in the host (both hosts)


@pytest.fixture()
def loras(comfy) -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


def host_listing() -> list[str]:
    """What every LoRA dropdown of the host shows."""
    import folder_paths

    return folder_paths.get_filename_list("loras")


def model_erasure(model) -> Erasure:
    """A small full update of one real cross-attention tensor of ``model``."""
    weights = model.model.diffusion_model.state_dict()
    name = next(n for n in weights if n.endswith("attn2.to_k.weight"))
    shape = tuple(weights[name].shape)
    return Erasure(full={name: torch.full(shape, 0.01)}, shapes={name: shape},
                   metadata=ErasureMetadata(key_format="ldm", family="SD15"))


def test_save_node_from_8_threads_with_one_prefix_loses_nothing(pack_nodes, loras):
    saver, barrier, saved = pack_nodes["DivergenceUnlearnSaveErasure"](), threading.Barrier(8), []

    def run(i: int) -> None:
        barrier.wait()
        for j in range(4):
            saved.append(saver.execute(small_erasure(f"{i}-{j}"), "threads/same").ui["text"][0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(saved)) == 32 and set(saved) <= set(host_listing())
    assert saved_markers(loras / "threads") == sorted(f"{i}-{j}" for i in range(8) for j in range(4))


KILLED = """
import os, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from unlearn_core.erasure import Erasure
if sys.argv[3] == "before publishing":  # the whole content is written and fsynced: stop just before the link
    os.link = lambda *a, **k: (print("written", flush=True), time.sleep(600))
big = Erasure(full={"big.weight": torch.ones(64_000_000)}, shapes={"big.weight": (64_000_000,)})
print("saving", flush=True)
big.save_numbered(sys.argv[2], "killed")
"""


@pytest.mark.skipif(os.name == "nt", reason="kill -9 is POSIX")
@pytest.mark.parametrize("moment", ["while writing", "before publishing"])
def test_kill_9_in_the_middle_of_a_large_save_leaves_nothing_the_host_lists(comfy, loras, moment):
    folder = loras / "killed"
    folder.mkdir(exist_ok=True)
    before = set(host_listing())
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(ROOT), str(folder), moment], stdout=subprocess.PIPE,
                             text=True)
    try:
        wanted = "written" if moment == "before publishing" else "saving"
        while child.stdout.readline().strip() != wanted:
            assert child.poll() is None, "the saving process ended before the kill"
        while moment == "while writing" and not any(p.stat().st_size > 8 << 20 for p in folder.iterdir()):
            assert child.poll() is None, "the save finished before the kill"  # 256 MB take far longer than a poll
            time.sleep(0.002)
        child.kill()
        child.wait(timeout=60)
        assert set(host_listing()) == before, "a partial or temporary file is listed"
        assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    finally:
        child.kill()
        child.wait(timeout=60)
        for leftover in folder.iterdir():  # what a killed save leaves is hidden; free its space here
            leftover.unlink()


@pytest.mark.parametrize("prefix, problem", [
    ("x" * 161, "is 161 characters long: use at most 160"),
    ("a/" * 1500, "is 3000 characters long"),
    ("CON", "Windows cannot store"), ("aux/x", "Windows cannot store"), ("sub/lpt1.txt", "Windows cannot store"),
    ("x.", "Windows cannot store"), ("x ", "Windows cannot store"),
])
def test_bad_filename_prefix_is_one_clear_error_naming_it(pack_nodes, prefix, problem):
    with pytest.raises(ValueError) as info:
        pack_nodes["DivergenceUnlearnSaveErasure"].execute(small_erasure(), prefix)
    assert str(info.value).startswith("filename_prefix '") and problem in str(info.value)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("strength", [math.nan, math.inf, -math.inf])
def test_non_finite_strength_is_refused_naming_the_widget(pack_nodes, strength):
    with pytest.raises(ValueError, match=r"strength is (nan|inf|-inf): set the strength widget"):
        pack_nodes["DivergenceUnlearnApplyErasure"].execute(None, strength, "none", small_erasure())


def test_upper_case_extension_is_listed_and_loads(pack_nodes, sd15_model, loras):
    erasure = model_erasure(sd15_model)
    erasure.save(loras / "case" / "upper.SAFETENSORS")
    assert "case/upper.SAFETENSORS" in [n.replace(os.sep, "/") for n in host_listing()]
    with torch.inference_mode():
        out = pack_nodes["DivergenceUnlearnApplyErasure"].execute(sd15_model, 1.0, "case/upper.SAFETENSORS").args[0]
    assert set(out.patches) == {"diffusion_model." + name for name in erasure.names}


@pytest.mark.parametrize("tensor, problem", [
    (lambda t: torch.zeros(3, 3), r"has shape \(3, 3\), not its recorded"),
    (lambda t: torch.full_like(t, math.nan), "holds NaN or infinite values"),
])
def test_file_with_other_tensor_shapes_or_nan_is_refused_not_silently_unapplied(pack_nodes, sd15_model, loras,
                                                                                 tensor, problem):
    tensors, header = model_erasure(sd15_model).to_state_dict()
    key = next(iter(tensors))
    tensors[key] = tensor(tensors[key])
    save_file(tensors, str(loras / "damaged.safetensors"), metadata=header)
    with pytest.raises(ValueError, match=rf"^damaged\.safetensors: this erasure file is damaged: tensor .*{problem}"):
        with torch.inference_mode():
            pack_nodes["DivergenceUnlearnApplyErasure"].execute(sd15_model, 1.0, "damaged.safetensors")


@pytest.mark.slow  # the node's 30 critic warm-up steps; test_trainer checks 32 px with one
def test_variational_divergence_trains_at_the_nodes_smallest_resolution(pack_nodes, sd15_model, sd15_clip):
    from helpers import load_concepts, unlearn, untrained

    concepts, _ = load_concepts(pack_nodes, "a red circle -> a red shape")
    _, erasure, _ = unlearn(pack_nodes, sd15_model, sd15_clip, concepts, divergence="variational_kl", resolution=32,
                            steps=1, anchor_samples=1, sample_steps=1)
    assert untrained(erasure) == []
