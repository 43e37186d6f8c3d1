"""The static check of a task's wheels (controller/sandbox/wheel_check.py) and the rules
it shares with the image comparison (controller/sandbox/install_rules.py), on wheels
written by hand and, where this host's local index has them, on real ones. Pure: the
base's layout is the probe's output for a sandbox-like image."""

from __future__ import annotations

import json
import stat
import struct
from pathlib import Path

import pytest

from controller.sandbox.image import ImageBuildError
from controller.sandbox.install_check import ADDED, CHANGED, DELETED, Change, placement_problems
from controller.sandbox.install_rules import BaseLayout
from controller.sandbox.wheel_check import WheelCaps, check_wheelhouse, inspect_wheel
from tests.wheel_files import make_wheel

SITE = "/opt/venv/lib/python3.11/site-packages"
LAYOUT = BaseLayout.from_probe(json.dumps({
    "site_packages": [SITE], "scripts": "/opt/venv/bin", "data": "/opt/venv",
    "stdlib": ["/usr/lib/python3.11"],
    "import_dirs": {
        "/usr/lib/python3.11": ["json", "os.py", "argparse.py", "test"],
        "/usr/lib/python3.11/lib-dynload": ["_ssl.cpython-311-x86_64-linux-gnu.so"],
        SITE: ["numpy", "numpy.libs", "numpy-2.4.6.dist-info", "torch", "fsspec",
               "networkx", "typing_extensions.py", "__pycache__", "bilevel.pth"],
        "/opt/bilevel/lib": ["sitecustomize.py", "trainer"]},
    "path_dirs": {"/opt/venv/bin": ["python", "python3", "pip", "pip3"],
                  "/usr/bin": ["sh", "env", "python3.11"]},
}).encode())
PIP_PACKAGES = ("pandas", "scipy", "scikit_learn", "joblib", "threadpoolctl", "six")


def refused(tmp_path: Path, files: dict[str, str | bytes], words: str, **kw: object) -> None:
    wheel = make_wheel(tmp_path, "bilevelpkg", "1.0", {"bilevelpkg/__init__.py": "", **files},
                       **kw)  # type: ignore[arg-type]
    with pytest.raises(ImageBuildError, match=words):
        inspect_wheel(wheel, LAYOUT)


def test_layout_probe_names_what_the_base_has() -> None:
    assert {"numpy", "numpy.libs", "json", "os", "sitecustomize", "trainer"} <= LAYOUT.taken
    assert LAYOUT.packages >= {"numpy", "torch", "fsspec", "trainer"}
    assert "json" not in LAYOUT.packages and "python3" in LAYOUT.commands
    assert LAYOUT.inert == ("/opt/venv/share", "/opt/venv/include")


def test_allow_package_console_script_data_and_headers(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "bilevelpkg", "1.0", {
        "bilevelpkg/__init__.py": "def main():\n    print('hi')\n",
        "bilevelpkg/_native.cpython-311-x86_64-linux-gnu.so": b"\x7fELF",
        "bilevelpkg-1.0.data/scripts/bilevel-tool": "#!python\n",
        "bilevelpkg-1.0.data/purelib/bilevelpkg_extra.py": "",
        "bilevelpkg-1.0.data/data/lib/python3.11/site-packages/bilevelpkg_data/x.json": "{}",
        "bilevelpkg-1.0.data/data/share/man/man1/bilevel-tool.1": "",
        "bilevelpkg-1.0.data/headers/bilevelpkg.h": ""},
        entry_points="[console_scripts]\nbilevel = bilevelpkg:main\n\n"
                     "[bilevelpkg.plugins]\nx = bilevelpkg:main\n")
    assert inspect_wheel(wheel, LAYOUT).installed_bytes > 0


@pytest.mark.parametrize("member", [
    "zz_hook.pth",
    "bilevelpkg/deep/weights.pth",
    "bilevelpkg-1.0.data/purelib/zz_hook.pth",
    "bilevelpkg-1.0.data/data/lib/python3/dist-packages/zz_hook.pth",
    "bilevelpkg-1.0.data/data/share/zz_hook.PTH",
])
def test_deny_pth_file_anywhere_in_a_wheel(tmp_path: Path, member: str) -> None:
    refused(tmp_path, {member: "import os\n"}, rf"{member}'? is a \.pth file")


@pytest.mark.parametrize("member", [
    "sitecustomize.py", "sitecustomize.pyc", "__pycache__/sitecustomize.cpython-311.pyc",
    "sitecustomize.cpython-311-x86_64-linux-gnu.so", "sitecustomize.abi3.so",
    "sitecustomize/__init__.py", "usercustomize.py", "bilevelpkg/usercustomize.py",
    "bilevelpkg-1.0.data/platlib/sitecustomize.so", "bilevelpkg-1.0.data/scripts/sitecustomize",
])
def test_deny_sitecustomize_or_usercustomize_in_any_form(tmp_path: Path, member: str) -> None:
    refused(tmp_path, {member: b"\0"}, r"is a (site|user)customize module")


@pytest.mark.parametrize(("member", "words"), [
    ("bilevelpkg-1.0.data/data/lib/python3/dist-packages/hidden.py",
     "lands at /opt/venv/lib/python3/dist-packages/hidden.py, outside"),
    ("bilevelpkg-1.0.data/data/bin/python3", "lands at /opt/venv/bin/python3, outside"),
    ("bilevelpkg-1.0.data/data/etc/pip.conf", "lands at /opt/venv/etc/pip.conf, outside"),
    ("bilevelpkg-1.0.data/data/pyvenv.cfg", "lands at /opt/venv/pyvenv.cfg, outside"),
    ("bilevelpkg-1.0.data/scripts/python3", "shadows the command 'python3'"),
    ("bilevelpkg-1.0.data/scripts/sh", "shadows the command 'sh'"),
    ("bilevelpkg-1.0.data/scripts/sub/tool", "is a script in a subfolder"),
    ("bilevelpkg-1.0.data/scripts/-rf", "is not a plain script name"),
    ("bilevelpkg-1.0.data/bogus/x", "unknown scheme 'bogus'"),
    ("other-1.0.data/purelib/x.py", "is in a .data folder of another distribution"),
])
def test_deny_members_landing_outside_the_allowed_places(tmp_path: Path, member: str,
                                                         words: str) -> None:
    refused(tmp_path, {member: "x"}, words)


@pytest.mark.parametrize(("member", "words"), [
    ("numpy/_distributor_init_local.py", "extends 'numpy'"),
    ("torch.libs/libgomp.so.1", "extends 'torch'"),
    ("trainer/__init__.py", "extends 'trainer'"),
    ("json/__init__.py", "extends 'json'"),
    ("argparse.py", "extends 'argparse'"),
    ("__pycache__/typing_extensions.cpython-311.pyc", "bytecode for site-packages"),
    ("bilevelpkg-1.0.data/purelib/numpy/x.py", "extends 'numpy'"),
    ("numpy-9.0.dist-info/METADATA", "is not the one .dist-info folder"),
    ("bilevelpkg-1.0.data/purelib/numpy-9.0.dist-info/METADATA", "metadata of another"),
    ("fake.egg-info/PKG-INFO", "metadata of another distribution"),
])
def test_deny_shadowing_or_extending_what_the_base_has(tmp_path: Path, member: str,
                                                       words: str) -> None:
    refused(tmp_path, {member: "x"}, words)


@pytest.mark.parametrize(("entry_points", "words"), [
    ("[console_scripts]\npython3 = bilevelpkg:main\n", "shadows the command 'python3'"),
    ("[gui_scripts]\nenv = bilevelpkg:main\n", "shadows the command 'env'"),
    ("[console_scripts]\npip3.99 = bilevelpkg:main\n", "installed by pip under other"),
    ("[console_scripts]\n../../x = bilevelpkg:main\n", "not a plain script name"),
    ("[torch.backends]\nx = bilevelpkg:load\n", "plugs into 'torch'"),
    ("[networkx.backend_info]\nx = bilevelpkg:info\n", "plugs into 'networkx'"),
    ("[fsspec.specs]\nx = bilevelpkg.FS\n", "plugs into 'fsspec'"),
    ("python3 = bilevelpkg:main\n", "no entry point"),
    ("[console_scripts]\njust-a-name\n", "no entry point"),
])
def test_deny_entry_points_that_shadow_commands_or_plug_into_the_base(
        tmp_path: Path, entry_points: str, words: str) -> None:
    refused(tmp_path, {}, words, entry_points=entry_points)


@pytest.mark.parametrize(("member", "mode", "words"), [
    ("/abs.py", None, "absolute or has an empty"),
    ("bilevelpkg/../../../etc/x", None, "'\\.\\.' component"),
    ("bilevelpkg//x.py", None, "empty"),
    ("bilevelpkg\\x.py", None, "not printable ASCII"),
    ("bilevelpkg/caf\u00e9.py", None, "not printable ASCII"),
    ("bilevelpkg/" + "x" * 600, None, "over 512 characters"),
    ("bilevelpkg/" + "x" * 300 + ".py", None, "component over 255"),
    ("bilevelpkg/link", stat.S_IFLNK | 0o777, "only plain files and folders"),
    ("bilevelpkg/fifo", stat.S_IFIFO | 0o644, "only plain files and folders"),
    ("bilevelpkg/suid", stat.S_IFREG | 0o4755, "without setuid"),
])
def test_deny_hostile_member_names_and_modes(tmp_path: Path, member: str, mode: int | None,
                                             words: str) -> None:
    refused(tmp_path, {member: "x"}, words, modes={member: mode} if mode else None)


def test_deny_duplicate_members_and_zips_over_caps(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "bilevelpkg", "1.0", {"bilevelpkg/a.py": "a" * 5000,
                                                        "bilevelpkg/b.py": ""})
    with pytest.raises(ImageBuildError, match="declares 5 members, over the cap of 4"):
        inspect_wheel(wheel, LAYOUT, WheelCaps(members=4))
    with pytest.raises(ImageBuildError, match="byte directory, over the cap of 100"):
        inspect_wheel(wheel, LAYOUT, WheelCaps(central_directory_bytes=100))
    with pytest.raises(ImageBuildError, match=r"unpack to .* bytes, over the 4000 byte cap"):
        check_wheelhouse(tmp_path, LAYOUT, WheelCaps(installed_bytes=4000))

    data = bytearray(wheel.read_bytes())  # an end record that undercounts the members
    end = data.rfind(b"PK\x05\x06")
    data[end + 8:end + 12] = (2).to_bytes(2, "little") * 2
    wheel.write_bytes(bytes(data))
    with pytest.raises(ImageBuildError, match="lists 5 members, its end record 2"):
        inspect_wheel(wheel, LAYOUT)
    # A zip64 record before the end record, as zipfile reads it, declaring a huge
    # directory: refused before zipfile would read it.
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 10**6, 10**6,
                         1 << 40, 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    wheel.write_bytes(bytes(data[:end]) + record + locator + bytes(data[end:]))
    with pytest.raises(ImageBuildError, match="declares 1000000 members"):
        inspect_wheel(wheel, LAYOUT)
    wheel.write_bytes(b"not a zip at all")
    with pytest.raises(ImageBuildError, match="not a zip file"):
        inspect_wheel(wheel, LAYOUT)

    import zipfile
    dup = tmp_path / "dup" / "bilevelpkg-1.0-py3-none-any.whl"
    dup.parent.mkdir()
    with zipfile.ZipFile(dup, "w") as zf, pytest.warns(UserWarning, match="Duplicate"):
        zf.writestr("bilevelpkg-1.0.dist-info/METADATA", "x")
        zf.writestr("bilevelpkg/a.py", "")
        zf.writestr("bilevelpkg/a.py", "import os")
    with pytest.raises(ImageBuildError, match=r"'bilevelpkg/a\.py' appears twice"):
        inspect_wheel(dup, LAYOUT)


def test_deny_a_wheelhouse_holding_anything_but_wheels(tmp_path: Path) -> None:
    make_wheel(tmp_path, "bilevelpkg", "1.0", {"bilevelpkg/__init__.py": ""})
    (tmp_path / "requirements.txt").write_text("bilevelpkg\n")
    assert len(check_wheelhouse(tmp_path, LAYOUT)) == 1
    (tmp_path / "bilevelpkg-1.0.tar.gz").write_bytes(b"")
    with pytest.raises(ImageBuildError, match=r"'bilevelpkg-1\.0\.tar\.gz', which is neither"):
        check_wheelhouse(tmp_path, LAYOUT)


def test_allow_real_wheels_from_the_local_index() -> None:
    """Real wheels (pandas with its plotting-backend entry point, scipy, scikit-learn)
    pass, where this host's local index has them."""
    folder = Path("/opt/pypi/files")
    wheels = [w for p in PIP_PACKAGES for w in sorted(folder.glob(f"{p}-*.whl"))[-1:]
              if "cp311" in w.name or "py3-none" in w.name or "py2.py3" in w.name]
    if not wheels:
        pytest.skip("no local index with real wheels on this host")
    for wheel in wheels:
        assert inspect_wheel(wheel, LAYOUT).installed_bytes > 0, wheel


def test_image_comparison_rules_for_engine_changes() -> None:
    """The pure part of the comparison: what the engine's diff may hold."""
    ok = [Change("/opt", CHANGED), Change(SITE, CHANGED), Change(f"{SITE}/pkg", ADDED),
          Change(f"{SITE}/pkg/__init__.py", ADDED), Change(f"{SITE}/pkg-1.0.dist-info", ADDED),
          Change("/opt/venv/bin/pkg-tool", ADDED), Change("/opt/venv/share/man/x.1", ADDED)]
    assert placement_problems(ok, LAYOUT) == []
    bad = [Change("/opt/venv/bin/isympy", DELETED),
           Change("/opt/venv/lib/python3/dist-packages/zz.pth", ADDED),
           Change(f"{SITE}/numpy/_distributor_init_local.py", ADDED),
           Change(f"{SITE}/zz.pth", ADDED), Change(f"{SITE}/__pycache__/x.pyc", ADDED),
           Change("/opt/venv/bin/sh", ADDED), Change("/etc/ld.so.preload", ADDED),
           Change(f"{SITE}/x", 7)]
    problems = placement_problems(bad, LAYOUT)
    assert len(problems) == len(bad), problems
    assert "isympy is deleted" in problems[0] and ".pth file" in problems[1]
    assert "outside site-packages" in problems[6]
    assert "extends 'numpy'" in problems[2] and ".pth file" in problems[3]
    assert "shadows the command 'sh'" in problems[5] and "unknown change kind" in problems[7]
