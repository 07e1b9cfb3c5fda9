"""Recipe plumbing: option parsing, up-to-date stage skipping, job arrays."""
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from sertk.common.jobs import launch, sbatch_script, JobArray


def _run(cmd, cwd, **kw):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)


def _stage(tmp_path, inputs, options, cmd):
    return _run([sys.executable, "-m", "sertk.cli", "stage", "--num", "2", "--name", "feat",
                 "--exp", str(tmp_path / "exp"), "--inputs", *inputs, "--outputs", str(tmp_path / "out.txt"),
                 "--options", options, "--", *cmd], tmp_path)


def test_stage_skips_when_unchanged_and_reruns_on_change(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("a: 1\n")
    counter = tmp_path / "count"
    cmd = ["bash", "-c", f"echo x >> {counter}; echo done > {tmp_path / 'out.txt'}"]
    assert _stage(tmp_path, [str(conf)], "nj=2", cmd).returncode == 0
    r = _stage(tmp_path, [str(conf)], "nj=2", cmd)
    assert r.returncode == 0 and "stage 2 up to date" in r.stderr
    assert counter.read_text().count("x") == 1
    # a changed option re-runs the stage instead of reusing stale output
    r = _stage(tmp_path, [str(conf)], "nj=4", cmd)
    assert "options changed" in r.stderr and counter.read_text().count("x") == 2
    # so does a changed input file
    conf.write_text("a: 2\n")
    r = _stage(tmp_path, [str(conf)], "nj=4", cmd)
    assert "inputs changed" in r.stderr and counter.read_text().count("x") == 3
    # and a deleted output
    (tmp_path / "out.txt").unlink()
    r = _stage(tmp_path, [str(conf)], "nj=4", cmd)
    assert "outputs missing" in r.stderr and counter.read_text().count("x") == 4


def test_failed_stage_leaves_no_marker(tmp_path):
    conf = tmp_path / "conf.yaml"
    conf.write_text("a: 1\n")
    r = _stage(tmp_path, [str(conf)], "", ["bash", "-c", "exit 3"])
    assert r.returncode == 3
    assert not list((tmp_path / "exp" / ".stages").glob("*.json"))


def test_jobs_rerun_only_failed_parts(tmp_path):
    script = tmp_path / "work.sh"
    # part 2 fails the first time (no flag file), succeeds once the flag exists
    script.write_text(textwrap.dedent(f"""\
        echo run >> {tmp_path}/runs.$1
        if [ "$1" = 2 ] && [ ! -e {tmp_path}/flag ]; then exit 1; fi
        echo ok > {tmp_path}/out.$1
    """))
    cmd = ["bash", str(script), "JOB"]
    failed = launch(cmd, 3, tmp_path / "log", name="t")
    assert failed == [2]
    assert "exit code 1" in (tmp_path / "log" / "t.2.log").read_text()
    (tmp_path / "flag").touch()
    assert launch(cmd, 3, tmp_path / "log", name="t") == []
    assert [(tmp_path / f"runs.{j}").read_text().count("run") for j in (1, 2, 3)] == [1, 2, 1]


def test_jobs_cli_reports_failures(tmp_path):
    r = _run([sys.executable, "-m", "sertk.cli", "jobs", "--nj", "2", "--log-dir", str(tmp_path / "log"),
              "--", "bash", "-c", "test JOB = 1"], tmp_path)
    assert r.returncode == 1 and "1/2 parts failed ([2])" in r.stderr


def test_jobs_require_job_placeholder(tmp_path):
    with pytest.raises(ValueError, match="JOB"):
        launch(["echo", "hi"], 2, tmp_path)


def test_slurm_backend_submits_an_array(tmp_path, monkeypatch):
    """A stand-in sbatch runs the array tasks the way Slurm would (env SLURM_ARRAY_TASK_ID)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "sbatch"
    fake.write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        script="${@: -1}"
        echo "$@" > "$(dirname "$script")/sbatch.args"
        ids=$(grep -- '--array=' "$script" | sed 's/.*--array=//')
        for id in ${ids//,/ }; do SLURM_ARRAY_TASK_ID=$id bash "$script"; done
        echo 1234
    """))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cmd = ["bash", "-c", f"echo part JOB > {tmp_path}/o.JOB"]
    failed = launch(cmd, 3, tmp_path / "log", name="s", backend="slurm", slurm_opts="--mem=1G")
    assert failed == []
    assert (tmp_path / "o.2").read_text().strip() == "part 2"
    args = (tmp_path / "log" / "sbatch.args").read_text()
    assert "--wait" in args
    text = (tmp_path / "log" / "s.sbatch").read_text()
    assert "#SBATCH --array=1,2,3" in text and "#SBATCH --mem=1G" in text


def test_sbatch_script_only_lists_pending_parts(tmp_path):
    arr = JobArray(["run", "JOB"], 4, tmp_path, "x")
    assert "#SBATCH --array=2,4" in sbatch_script(arr, [2, 4])


def _parse_script(tmp_path, repo_root, body):
    s = tmp_path / "s.sh"
    s.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        set -euo pipefail
        # ---- options ----
        stage=1          # first stage
        train_set=train  # training data dir
        # ---- end options ----
        . {repo_root}/utils/parse_options.sh
        {body}
    """))
    return s


def test_parse_options_sets_dashed_and_underscored(tmp_path, repo_root):
    s = _parse_script(tmp_path, repo_root, 'echo "$stage $train_set $#"')
    r = _run(["bash", str(s), "--stage", "3", "--train-set", "x y", "pos"], tmp_path)
    assert r.stdout.strip() == "3 x y 1"
    r = _run(["bash", str(s), "--train_set=z"], tmp_path)
    assert r.stdout.strip() == "1 z 0"


def test_parse_options_rejects_unknown_and_prints_help(tmp_path, repo_root):
    s = _parse_script(tmp_path, repo_root, "echo ran")
    r = _run(["bash", str(s), "--nonsense", "1"], tmp_path)
    assert r.returncode != 0 and "invalid option --nonsense" in r.stderr
    r = _run(["bash", str(s), "--stage", "5", "--help"], tmp_path)
    assert r.returncode == 0 and "ran" not in r.stdout
    assert '--stage' in r.stdout and '"5"' in r.stdout and "first stage" in r.stdout
    assert "--train-set" in r.stdout


def test_recipe_help_lists_every_option(repo_root):
    r = _run(["bash", "egs/mini_emo/run.sh", "--help"], repo_root)
    assert r.returncode == 0, r.stderr
    for opt in ("--stage", "--stop-stage", "--nj", "--backend", "--ser-configs", "--redo"):
        assert opt in r.stdout
    assert '"mini_emo"' in r.stdout  # current value set by run.sh, not the template default
