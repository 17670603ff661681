"""A full disk and a denied permission reach the user as one `error: ...` line naming the path, exit code 2, and
leave the user's files as they were. Nothing is mocked:

- full disk: /dev/full, a device every write to fails with ENOSPC (a file `data check --out` writes is a link to
  it), and a 64 KiB tmpfs mounted in a private mount namespace (`unshare --mount`) under a run's output.dir;
- permission denied: the tests run as root, which ignores file modes, so the CLI runs as root without the
  capabilities that override them (`setpriv` drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH), against a folder of
  mode 0555. (Switching to an unprivileged user instead does not work here: the interpreter lives under /root.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import reverse_rows, tiny_recipe, write_jsonl
from tests.unit.test_cli import invoke, one_error_line

TUNELAB = Path(sys.executable).with_name("tunelab")
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def snapshot(*paths: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in paths}


def run_cli(args: list[str], home: Path, wrapper: list[str] = ()) -> tuple[int, str]:
    """`tunelab ARGS` in a subprocess (under `wrapper`); (exit code, stderr)."""
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    done = subprocess.run([*wrapper, str(TUNELAB), *args], env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "d.jsonl", reverse_rows(30))


# ---- a full disk -------------------------------------------------------------------------------------------------

@pytest.fixture
def check_on_dev_full(capsys, tmp_path, home, tiny_checkpoint, data):
    """`tunelab data check DATA --out OUT` where OUT/data_report.json is a link to /dev/full."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    out = tmp_path / "check"
    out.mkdir()
    (out / "data_report.json").symlink_to("/dev/full")
    given = snapshot(data)
    code, _, err = invoke(capsys, "data", "check", str(data), "--model", str(tiny_checkpoint), "--out", str(out))
    assert snapshot(data) == given
    assert os.readlink(out / "data_report.json") == "/dev/full"
    return code, err, out


def test_a_full_disk_in_data_check_is_one_line_and_exit_2(check_on_dev_full):
    code, err, _ = check_on_dev_full
    assert code == 2
    assert one_error_line(err).startswith("error: No space left on device")


def test_a_full_disk_in_data_check_names_the_file(check_on_dev_full):
    code, err, out = check_on_dev_full
    assert str(out / "data_report.json") in one_error_line(err)


def can_mount_a_private_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def train_on_a_full_disk(tmp_path_factory, tiny_checkpoint):
    """`tunelab train` whose output.dir lies on a 64 KiB tmpfs (in a mount namespace of its own, gone with it)."""
    if not can_mount_a_private_tmpfs():
        pytest.skip("cannot mount a tmpfs in a private mount namespace (needs root with CAP_SYS_ADMIN and unshare)")
    tmp = tmp_path_factory.mktemp("full-disk")
    disk = tmp / "disk"
    disk.mkdir()
    data = write_jsonl(tmp / "d.jsonl", reverse_rows(60))
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp, tiny_checkpoint, data, train={"max_steps": 2},
                                                 output={"dir": str(disk / "run")})))
    given = snapshot(data, recipe)
    mount = f"mount -t tmpfs -o size=64k tmpfs {disk} && exec \"$0\" \"$@\""
    code, err = run_cli(["train", str(recipe), "--no-eval"], tmp / "home", ["unshare", "--mount", "sh", "-c", mount])
    assert snapshot(data, recipe) == given
    return code, err, disk


def test_training_onto_a_full_disk_is_one_line_and_exit_2(train_on_a_full_disk):
    code, err, _ = train_on_a_full_disk
    assert code == 2, err
    assert one_error_line(err).startswith("error: No space left on device")


def test_training_onto_a_full_disk_names_a_path_on_that_disk(train_on_a_full_disk):
    code, err, disk = train_on_a_full_disk
    assert f": {disk}/run" in one_error_line(err)


# ---- permission denied -------------------------------------------------------------------------------------------

@pytest.fixture
def locked(tmp_path) -> Path:
    """A folder its owner (root) may read but not write, once root's override capabilities are dropped."""
    if os.geteuid() != 0:
        pytest.skip("runs as root without CAP_DAC_OVERRIDE; as another user, modes apply anyway: nothing to show")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    probe = subprocess.run([*NO_DAC, "sh", "-c", f"touch {folder}/probe"], capture_output=True)
    if probe.returncode == 0:
        folder.chmod(0o755)
        pytest.skip("dropping CAP_DAC_OVERRIDE with setpriv does not make root obey file modes here")
    yield folder
    folder.chmod(0o755)


def test_a_denied_out_folder_is_one_line_naming_the_file(tmp_path, tiny_checkpoint, data, locked):
    given = snapshot(data)
    code, err = run_cli(["data", "check", str(data), "--model", str(tiny_checkpoint), "--out", str(locked)],
                        tmp_path / "home", NO_DAC)
    assert code == 2
    assert one_error_line(err) == f"error: Permission denied: {locked}/data_report.html"
    assert snapshot(data) == given and list(locked.iterdir()) == []


def test_a_denied_tunelab_home_is_one_line_naming_it(tmp_path, tiny_checkpoint, data, locked):
    code, err = run_cli(["data", "check", str(data), "--model", str(tiny_checkpoint), "--out", str(tmp_path / "c")],
                        locked / "home", NO_DAC)
    assert code == 2
    assert one_error_line(err) == f"error: Permission denied: {locked}/home"
    assert list(locked.iterdir()) == []


def test_a_denied_output_dir_stops_training_with_one_line(tmp_path, tiny_checkpoint, data, locked):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path, tiny_checkpoint, data, train={"max_steps": 2},
                                                 output={"dir": str(locked / "run")})))
    given = snapshot(data, recipe)
    code, err = run_cli(["train", str(recipe), "--no-eval"], tmp_path / "home", NO_DAC)
    assert code == 2
    assert one_error_line(err) == f"error: Permission denied: {locked}/run"
    assert snapshot(data, recipe) == given and list(locked.iterdir()) == []
