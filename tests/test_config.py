from pathlib import Path

import pytest

from rtdecode.base.config import config_to_toml, load_config
from rtdecode.base.errors import ConfigError
from rtdecode.base.settings import SessionConfig


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "session.toml"
    path.write_text(text)
    return path


def test_template_round_trips(tmp_path):
    path = _write(tmp_path, config_to_toml(SessionConfig()))
    cfg = load_config(path)
    assert cfg.scanner.tr_s == 1.5 and cfg.scanner.pattern == "001_{run:06d}_{volume:06d}.dcm"
    assert cfg.scanner.watch_dir == tmp_path / "incoming"  # relative paths resolve beside the file


def test_values_are_read_and_paths_resolved(tmp_path):
    (tmp_path / "mask.nii").write_bytes(b"")
    cfg = load_config(_write(tmp_path, '[scanner]\ntr_s = 2\nmode = "polling"\n[preprocess]\nmask = "mask.nii"\n'))
    assert cfg.scanner.tr_s == 2.0 and cfg.scanner.mode == "polling"
    assert cfg.preprocess.mask == tmp_path / "mask.nii"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[scanner]\ntr = 1.5\n", "unknown key scanner.tr;"),
        ("[scaner]\n", "unknown section [scaner]"),
        ("[scanner]\ntr_s = -1\n", "scanner.tr_s must be positive, got -1.0"),
        ('[scanner]\ntr_s = "fast"\n', "scanner.tr_s must be a number, got 'fast'"),
        ('[scanner]\nmode = "inotify"\n', "scanner.mode must be one of ['events', 'polling'], got 'inotify'"),
        ('[preprocess]\nmask = "nowhere.nii"\n', "preprocess.mask names a file that does not exist"),
        ('[scanner]\npattern = "vol.dcm"\n', "scanner.pattern: pattern must contain a {volume} placeholder"),
        ("[network]\nevents_port = 70000\n", "network.events_port must be a TCP port"),
        ('[session]\nsubject = "01/../x"\n', "session.subject must be letters and digits only"),
        ("[scanner\n", "not valid TOML"),
    ],
)
def test_bad_settings_give_one_clear_error(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert expected in str(info.value)
    assert str(tmp_path / "session.toml") in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "absent.toml")


def test_a_missing_watch_folder_is_one_line_before_anything_is_written(tmp_path):
    """The template's own watch_dir ("incoming") is not made for you: config check warns, and
    `rtdecode run` refuses in one line without leaving a half-made session folder."""
    import subprocess
    import sys

    cfg = tmp_path / "session.toml"
    subprocess.run([sys.executable, "-m", "rtdecode.cli", "config", "template", str(cfg)], check=True, timeout=60)
    check = subprocess.run([sys.executable, "-m", "rtdecode.cli", "config", "check", str(cfg)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0
    assert "warning: scanner.watch_dir: folder does not exist" in check.stdout
    run = subprocess.run([sys.executable, "-m", "rtdecode.cli", "run", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=60, env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if "scanner.watch_dir" in line]
    assert len(errors) == 1 and "folder does not exist" in errors[0], run.stderr
    assert not (tmp_path / "sessions").exists()
