"""hardware: shipped chip specs, the spec file format, name lookup, and calibration."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

import hardware
from hardware import Spec
from hardware.spec import DTYPES, NUMERIC_FIELDS

CANONICAL = (
    "a100-40gb", "a100-80gb", "b200", "h100-sxm", "h200", "h800", "mi300x",
    "tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e",
)
SPEC_DIR = Path(hardware.__file__).parent / "specs"


def _valid_text() -> str:
    return hardware.to_toml(hardware.get("tpu-v5e"))


def _write(tmp_path: Path, text: str, name: str = "chip.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- the shipped specs


def test_names_are_the_ten_shipped_chips_sorted():
    assert hardware.names() == CANONICAL


@pytest.mark.parametrize("name", CANONICAL)
def test_every_shipped_spec_loads_with_a_source_for_each_number(name):
    spec = hardware.load(SPEC_DIR / f"{name}.toml")
    assert spec.name == name
    assert spec == hardware.get(name)
    assert "bf16" in spec.peak_flops  # every accelerator lists bf16
    for dtype, value in spec.peak_flops.items():
        assert dtype in DTYPES and math.isfinite(value) and value > 0
        assert spec.sources[f"peak_flops.{dtype}"].strip()
    for field in NUMERIC_FIELDS:
        value = getattr(spec, field)
        assert math.isfinite(value) and value > 0
        source = spec.sources[field]
        # "source, date": the last comma-separated part is a year or a year-month.
        assert source.rsplit(", ", 1)[-1][:4].isdigit(), (field, source)


@pytest.mark.parametrize(
    "name, field, expected",
    [
        # dense, per chip: jax-ml/scaling-book tpus.md and gpus.md; llm-analysis's GPU configs; datasheets.
        ("h100-sxm", "peak_flops.bf16", 9.89e14),
        ("h100-sxm", "hbm_bandwidth", 3.35e12),
        ("h100-sxm", "interconnect_bandwidth", 4.5e11),  # NVLink 450 GB/s per GPU
        ("a100-80gb", "peak_flops.bf16", 3.12e14),
        ("a100-80gb", "hbm_bandwidth", 2.039e12),
        ("h200", "hbm_bytes", 141e9),
        ("b200", "peak_flops.bf16", 2.25e15),
        ("b200", "hbm_bandwidth", 8e12),
        ("tpu-v4", "peak_flops.bf16", 2.75e14),
        ("tpu-v5e", "peak_flops.bf16", 1.97e14),
        ("tpu-v5e", "hbm_bytes", 16e9),
        ("tpu-v5e", "hbm_bandwidth", 8.1e11),
        ("tpu-v5p", "peak_flops.bf16", 4.59e14),
        ("tpu-v5p", "hbm_bytes", 96e9),
        ("tpu-v6e", "peak_flops.bf16", 9.18e14),
        ("tpu-v6e", "hbm_bandwidth", 1.6e12),
    ],
)
def test_numbers_match_references_section_5(name, field, expected):
    spec = hardware.get(name)
    if field.startswith("peak_flops."):
        value = spec.peak(field.removeprefix("peak_flops."))
    else:
        value = getattr(spec, field)
    assert value == expected


def test_tpu_ici_is_links_times_one_way_per_link():
    # scaling-book tpus.md: 3D torus (v4, v5p) = 6 links, 2D torus (v5e, v6e) = 4 links;
    # one-way per link 4.5e10 (v4, v5e) and 9e10 (v5p, v6e).
    assert hardware.get("tpu-v4").interconnect_bandwidth == 6 * 4.5e10
    assert hardware.get("tpu-v5p").interconnect_bandwidth == 6 * 9e10
    assert hardware.get("tpu-v5e").interconnect_bandwidth == 4 * 4.5e10
    assert hardware.get("tpu-v6e").interconnect_bandwidth == 4 * 9e10


# ---------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    "alias, name",
    [("h100", "h100-sxm"), ("H100", "h100-sxm"), ("a100", "a100-80gb"), ("v5p", "tpu-v5p"),
     ("TPU-V5P", "tpu-v5p"), ("mi300x", "mi300x"), ("TPU v5 lite", "tpu-v5e"),
     ("NVIDIA H100 80GB HBM3", "h100-sxm")],
)
def test_get_by_alias_any_case(alias, name):
    assert hardware.get(alias).name == name


def test_get_by_path_str_and_pathlike(tmp_path):
    spec = dataclasses.replace(hardware.get("h100"), name="my-h100", aliases=())
    path = tmp_path / "mine.toml"
    hardware.save(spec, path)
    assert hardware.get(path) == spec
    assert hardware.get(str(path)) == spec


def test_get_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown chip 'h300'") as err:
        hardware.get("h300")
    for name in CANONICAL:
        assert name in str(err.value)


def test_get_returns_independent_copies():
    hardware.get("h100").peak_flops["bf16"] = 1.0
    assert hardware.get("h100").peak("bf16") == 9.89e14


# ---------------------------------------------------------------- peak: no silent fallback


def test_peak_of_a_missing_dtype_names_the_dtype_chip_and_what_it_has():
    with pytest.raises(ValueError, match=r"tpu-v4 has no 'fp8' peak: it lists bf16 only"):
        hardware.get("tpu-v4").peak("fp8")
    with pytest.raises(ValueError, match=r"a100-80gb has no 'fp8' peak: it lists bf16, fp32"):
        hardware.get("a100").peak("float8_e4m3fn")


def test_peak_error_quotes_why_the_dtype_is_absent():
    with pytest.raises(ValueError, match=r"its spec file says: not available: A100 \(Ampere\)"):
        hardware.get("a100-40gb").peak("fp8")


def test_specs_hash_so_they_can_be_static_jit_arguments():
    assert hash(hardware.get("h100")) == hash(hardware.get("h100-sxm"))
    assert len({hardware.get(n) for n in CANONICAL}) == len(CANONICAL)


def test_peak_accepts_jax_dtype_names_and_rejects_unknown_ones():
    assert hardware.get("h100").peak("bfloat16") == hardware.get("h100").peak("bf16")
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        hardware.get("h100").peak("int4")


# ---------------------------------------------------------------- the file format


def test_save_load_round_trip_every_shipped_spec(tmp_path):
    for name in CANONICAL:
        spec = hardware.get(name)
        path = tmp_path / f"{name}.toml"
        hardware.save(spec, path)
        assert hardware.load(path) == spec


@pytest.mark.parametrize("field", ["name", "peak_flops", "hbm_bytes", "hbm_bandwidth",
                                   "interconnect", "domain_size", "sources"])
def test_missing_field_names_the_field_and_file(tmp_path, field):
    lines = _valid_text().splitlines()
    if field in ("peak_flops", "sources"):  # drop the whole table
        start = lines.index(f"[{field}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
                   len(lines))
        lines = lines[:start] + lines[end:]
    else:
        lines = [ln for ln in lines if not ln.startswith(f"{field} =")]
    path = _write(tmp_path, "\n".join(lines))
    with pytest.raises(ValueError, match=rf"chip\.toml: missing field\(s\) {field}"):
        hardware.load(path)


@pytest.mark.parametrize("field", ["hbm_bytes", "hbm_bandwidth", "interconnect_bandwidth",
                                   "inter_node_bandwidth"])
@pytest.mark.parametrize("bad", ["0.0", "-1e9", "nan", "inf"])
def test_non_positive_or_non_finite_field_names_field_and_file(tmp_path, field, bad):
    text = "\n".join(f"{field} = {bad}" if ln.startswith(f"{field} =") else ln
                     for ln in _valid_text().splitlines())
    with pytest.raises(ValueError, match=rf"chip\.toml: .*{field} must be a positive finite"):
        hardware.load(_write(tmp_path, text))


@pytest.mark.parametrize("bad", ["0", "-4", "2.5"])
def test_bad_domain_size_names_field_and_file(tmp_path, bad):
    text = _valid_text().replace("domain_size = 256", f"domain_size = {bad}")
    with pytest.raises(ValueError, match=r"chip\.toml: .*domain_size must be a positive integer"):
        hardware.load(_write(tmp_path, text))


@pytest.mark.parametrize("bad", ["0.0", "-1.0", "nan"])
def test_bad_peak_names_dtype_and_file(tmp_path, bad):
    text = _valid_text().replace("bf16 = 1.97e+14", f"bf16 = {bad}")
    with pytest.raises(ValueError,
                       match=r"chip\.toml: .*peak_flops\.bf16 must be a positive finite"):
        hardware.load(_write(tmp_path, text))


def test_malformed_toml_names_the_file(tmp_path):
    path = _write(tmp_path, _valid_text() + "\nhbm_bytes = = 3\n", "broken.toml")
    with pytest.raises(ValueError, match=r"broken\.toml: malformed TOML"):
        hardware.load(path)


def test_missing_source_names_the_field(tmp_path):
    text = "\n".join(ln for ln in _valid_text().splitlines()
                     if not ln.startswith('"hbm_bandwidth"'))
    with pytest.raises(ValueError, match=r"chip\.toml: .*sources\['hbm_bandwidth'\] is missing"):
        hardware.load(_write(tmp_path, text))


def test_unknown_field_and_unknown_dtype_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field\(s\) hbm_gb"):
        hardware.load(_write(tmp_path, "hbm_gb = 3\n" + _valid_text()))
    with pytest.raises(ValueError, match=r"peak_flops has unknown dtype 'int8'"):
        text = _valid_text().replace("[peak_flops]", "[peak_flops]\nint8 = 1e15")
        hardware.load(_write(tmp_path, text))


def test_missing_file_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.toml: cannot read spec file"):
        hardware.get(tmp_path / "nope.toml")


def test_spec_validates_at_construction():
    good = hardware.get("h100")
    with pytest.raises(ValueError,
                       match=r"hbm_bandwidth must be a positive finite number of bytes/s, got -1"):
        dataclasses.replace(good, hbm_bandwidth=-1)
    with pytest.raises(ValueError, match=r"peak_flops must be a non-empty table"):
        dataclasses.replace(good, peak_flops={})
    with pytest.raises(ValueError, match=r"sources\['peak_flops.fp8'\] is missing"):
        sources = {k: v for k, v in good.sources.items() if k != "peak_flops.fp8"}
        dataclasses.replace(good, sources=sources)


def test_to_toml_escapes_strings():
    spec = dataclasses.replace(hardware.get("b200"), name='odd "name" \\ \x7f é')
    assert hardware.from_toml(hardware.to_toml(spec)) == spec


# ---------------------------------------------------------------- calibrate


def test_calibrate_measures_this_machine_and_round_trips(tmp_path):
    spec = hardware.calibrate(seconds=0.5)
    assert isinstance(spec, Spec)
    assert spec.name.startswith("calibrated-")
    assert spec.interconnect == "none" and spec.domain_size == 1
    assert spec.peak("fp32") > 1e8  # any machine does more than 0.1 GFLOP/s
    assert spec.hbm_bandwidth > 1e8
    assert spec.hbm_bytes > 2**28
    assert all(s.startswith("measured by hardware.calibrate() on ") for s in spec.sources.values())
    path = tmp_path / "here.toml"
    hardware.save(spec, path)
    assert hardware.load(path) == spec


def test_calibrate_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"seconds must be a number in \(0, 600\], got 0"):
        hardware.calibrate(seconds=0)
    with pytest.raises(ValueError, match="got 1000000000.0"):  # would run for 30 years
        hardware.calibrate(seconds=1e9)
    with pytest.raises(ValueError, match="dtype must be 'float32' and/or 'bfloat16'"):
        hardware.calibrate(dtype="fp8")
