"""The command line: one-line errors with exit code 2, and the small commands end to end."""

import json
import subprocess
import sys

import pytest

from cyflat.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cyflat.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "dwork", "train.learnig_rate=1"], "did you mean 'train.learning_rate'"),
        (["train", "no-such-config"], "neither a shipped preset"),
        (["train", "--resume", "/nonexistent/run"], "not a cyflat run directory"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
        (["volume", "--variety", "z0**5 + z1**5 + z2**5 + z3**5 + z4**4"], "not homogeneous"),
        (["volume", "--variety", "z0**5 + z1**5 + z2**5 + z3**5 + w*z4**5"], "unknown symbol"),
        (["volume", "--variety", "z0**5 + (z1"], "cannot parse"),
        (["volume", "--variety", "z0**5 + z1**"], "(SyntaxError: invalid syntax"),
        (["volume", "--variety", "dwrok"], "did you mean 'dwork'"),
        (["volume", "--variety", "fermat", "--psi", "1"], "has no moduli"),
        (["volume", "--variety", "dwork", "--psi", "1,2"], "expected 1 value"),
        (["volume", "--variety", "dwork", "--psi", "abc"], "cannot read"),
        (["volume", "--variety", "dwork"], "--psi"),
        (["volume", "--variety", "fermat", "--points", "0"], "count"),
        (["donaldson", "--variety", "fermat", "--k", "0"], "degree"),
    ],
)
def test_errors_are_one_line_exit_2(args, fragment, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_volume_command_quintic():
    out = run_cli("volume", "--variety", "fermat", "--points", "20000")
    assert out.returncode == 0, out.stderr
    assert "Omega-volume" in out.stdout
    assert "0.833333" in out.stdout  # the Fubini-Study volume 5/6 is printed alongside


def test_donaldson_command_writes_json_and_png(tmp_path):
    out = run_cli("donaldson", "--variety", "dwork", "--dim", "1", "--psi", "0.5", "--k", "1", "2",
                  "--iterations", "3", "--sigma-points", "4000", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "donaldson.json").read_text())
    ks = [r["k"] for r in data["results"]]
    assert ks == [1, 2]
    assert all(0 < r["sigma"] < 1 for r in data["results"])
    png = (tmp_path / "donaldson_sigma.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_configs_command(capsys):
    assert main(["configs"]) == 0
    assert "dwork-gpu" in capsys.readouterr().out
    assert main(["configs", "fermat"]) == 0
    assert "kind: free" in capsys.readouterr().out


def test_show_config(capsys):
    assert main(["train", "dwork", "model.k=2", "--show-config"]) == 0
    assert "k: 2" in capsys.readouterr().out
