import json
import subprocess
import sys

from rtdecode.cli import main


def test_config_template_then_check(tmp_path, capsys):
    path = tmp_path / "session.toml"
    assert main(["config", "template", str(path)]) == 0
    assert main(["config", "check", str(path)]) == 0
    assert "ok" in capsys.readouterr().out
    path.write_text(path.read_text().replace("tr_s = 1.5", "tr_s = 0"))
    assert main(["config", "check", str(path)]) == 2
    assert "scanner.tr_s must be positive, got 0.0" in capsys.readouterr().err


def test_bench_preprocess_json_is_one_object():
    out = subprocess.run(
        [sys.executable, "-m", "rtdecode.cli", "bench", "preprocess", "--json", "--volumes", "3",
         "--shape", "40x48x30", "--voxels", "500"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["stage"] == "preprocess" and result["n_voxels"] == 500 and result["volumes"] == 2
    assert result["median_ms"] > 0 and result["p99_ms"] >= result["median_ms"]


def test_a_window_command_after_a_top_level_option_is_handed_on(capsys):
    """`rtdecode -v console --help` reaches the console's own parser (it ended in an AssertionError)."""
    try:
        main(["-v", "console", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "usage: rtdecode console" in out and "--threads" in out
