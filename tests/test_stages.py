"""Recipe plumbing: option parsing, up-to-date stage skipping, job arrays."""
import json
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


# ------------------------------------------------- ser.sh: what re-runs a stage --
FAKE_PY = """#!/usr/bin/env bash
# Records every call; `sertk stage` runs for real, every other sertk command only makes its outputs.
echo "$*" >> "$CALLS"
if [ "$1 $2 $3" = "-m sertk.cli stage" ]; then exec "$REAL_PY" "$@"; fi
if [ "$1 $2 $3" = "-m sertk.cli protocols" ]; then
  case "$*" in *--list-sets*) printf 'train\\ntest\\n' ;; esac
  exit 0
fi
if [ "$1" = prep.py ]; then  # the recipe's preparation: data dirs and an appended log under $2
  mkdir -p "$2/train" "$2/test" "$2/local"; echo "u1 s1" > "$2/train/utt2spk"; echo "u2 s2" > "$2/test/utt2spk"
  echo prepared >> "$2/local/prepare.log"; exit 0
fi
if [ "$2" = sertk.bin.train ] && [ -n "${TRAIN_SLEEP:-}" ]; then  # config-jobs tests: when each ran
  echo "start $4 threads=${OMP_NUM_THREADS:-}" >> "$CALLS"; sleep "$TRAIN_SLEEP"; echo "end $4" >> "$CALLS"
  case $4 in *fail*) exit 3 ;; esac
fi
out=0
for a in "$@"; do
  case $a in --out|--exp) out=1 ;; --*) out=0 ;; *) [ $out = 0 ] || { mkdir -p "$a"; touch "$a/feats.scp"; } ;; esac
done
if [ "$2" = sertk.bin.train ]; then  # a new training run: a new run record in its split dir
  while [ "$1" != --exp ]; do shift; done
  mkdir -p "$2/p"; echo "$RANDOM$RANDOM" > "$2/p/run_digest.json"
fi
"""


@pytest.fixture
def fake_recipe(tmp_path):
    """A recipe dir whose python only records calls, with a small corpus folder and one model config."""
    recipe = tmp_path / "recipe"
    (recipe / "conf").mkdir(parents=True)
    (recipe / "conf" / "protocols.yaml").write_text("corpus: x\n")
    (recipe / "conf" / "m.yaml").write_text("task: egemaps_linear\n")
    corpus = tmp_path / "corpus"
    (corpus / "spk1").mkdir(parents=True)
    for i in range(3):
        (corpus / "spk1" / f"{i}.wav").write_bytes(b"RIFF" + bytes(i))
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    return recipe


def _ser(recipe, repo_root, *args, ok=True, **env_extra):
    env = {**os.environ, "CALLS": str(recipe / "calls.log"), "REAL_PY": sys.executable, **env_extra}
    env.pop("OMP_NUM_THREADS", None)
    (recipe / "calls.log").write_text("")
    r = _run(["bash", str(repo_root / "egs/TEMPLATE/ser.sh"), "--corpus", "x",
              "--python", str(recipe.parent / "fake_python"),
              "--prepare-cmd", "$python prep.py $data", "--corpus-root", str(recipe.parent / "corpus"),
              "--ser-configs", "conf/m.yaml", "--stop-stage", "3", *args], recipe, env=env)
    assert (r.returncode == 0) == ok, r.stderr[-3000:]
    return r


def _ran(r) -> list[str]:
    """The stage names that ran (not 'up to date') in a ser.sh run."""
    import re
    return re.findall(r"stage \d+ \((\w+)\): running because", r.stderr)


def test_each_stage_reruns_only_for_its_own_options(fake_recipe, repo_root):
    r = _ser(fake_recipe, repo_root, "--overrides", "train.epochs=4")
    assert _ran(r) == ["data", "egemaps", "tokens", "train_m"]
    assert _ran(_ser(fake_recipe, repo_root, "--overrides", "train.epochs=4")) == []
    # a training override re-runs training only, not the corpus scan or the features
    r = _ser(fake_recipe, repo_root, "--overrides", "train.epochs=2")
    assert _ran(r) == ["train_m"] and "stage 3 (train_m): running because options changed" in r.stderr
    # concept-token thresholds: the tokens only
    assert _ran(_ser(fake_recipe, repo_root, "--overrides", "train.epochs=2", "--token-scope", "speaker")) == ["tokens"]
    # parallel jobs change no result
    assert _ran(_ser(fake_recipe, repo_root, "--overrides", "train.epochs=2", "--token-scope", "speaker",
                     "--nj", "7")) == []
    # logs are not inputs: the preparation's appended log does not re-run training
    with open(fake_recipe / "data" / "local" / "prepare.log", "a") as f:
        f.write("another run\n")
    (fake_recipe / "data" / "train" / "extra.log").write_text("x\n")
    assert _ran(_ser(fake_recipe, repo_root, "--overrides", "train.epochs=2", "--token-scope", "speaker")) == []


def _order(recipe) -> list[str]:
    return [c for c in (recipe / "calls.log").read_text().splitlines() if c.startswith(("start", "end"))]


def test_config_jobs_run_configs_at_once_and_a_student_after_its_teacher(fake_recipe, repo_root):
    conf = fake_recipe / "conf"
    (conf / "teacher.yaml").write_text("task: teacher\n")
    (conf / "student.yaml").write_text("task: distill\nteacher: exp/teacher\n")
    (conf / "other.yaml").write_text("task: egemaps_linear\n")
    r = _ser(fake_recipe, repo_root, "--stage", "3", "--ser-configs", "conf/teacher.yaml conf/other.yaml conf/student.yaml",
             "--config-jobs", "2", TRAIN_SLEEP="1")
    order = _order(fake_recipe)
    assert order.index("end conf/teacher.yaml") < order.index("start conf/student.yaml threads=1")
    # the config that needs nothing ran beside the teacher, each job on its share of the threads
    assert order.index("start conf/other.yaml threads=1") < order.index("end conf/teacher.yaml")
    assert "[student] " in r.stderr and "[teacher] " in r.stderr
    # a failed teacher stops its student and the stage, naming it
    (conf / "teacher_fail.yaml").write_text("task: teacher\n")
    (conf / "student2.yaml").write_text("task: distill\nteacher: exp/teacher_fail\n")
    r = _ser(fake_recipe, repo_root, "--stage", "3", "--ser-configs", "conf/teacher_fail.yaml conf/student2.yaml",
             "--config-jobs", "2", ok=False, TRAIN_SLEEP="0")
    assert "student2 waits for teacher_fail, which failed" in r.stderr
    assert not any("student2" in c for c in _order(fake_recipe))


def test_config_jobs_training_does_not_wait_for_a_model_named_only_for_evaluation(fake_recipe, repo_root):
    conf = fake_recipe / "conf"
    (conf / "classifier.yaml").write_text("task: classifier\n")
    # like SELM: the classifier is only the baseline its relative gain is taken against, at evaluation
    (conf / "selm.yaml").write_text("task: selm\nmodel: {lm: gpt2}\neval:\n  baseline: exp/classifier\n")
    _ser(fake_recipe, repo_root, "--stage", "3", "--stop-stage", "3",
         "--ser-configs", "conf/classifier.yaml conf/selm.yaml", "--config-jobs", "2", TRAIN_SLEEP="1")
    order = _order(fake_recipe)
    assert order.index("start conf/selm.yaml threads=1") < order.index("end conf/classifier.yaml")


def test_an_evaluation_only_stage_runs_the_first_time_one_config_at_a_time(fake_recipe, repo_root):
    # stage 9/10 configs have no exp/<tag> of their own before their first evaluation
    (fake_recipe / "conf" / "z.yaml").write_text("task: zsfuse\n")
    _ser(fake_recipe, repo_root, "--stop-stage", "2")
    for jobs in ("1", "2"):
        r = _ser(fake_recipe, repo_root, "--stage", "9", "--stop-stage", "9", "--zsfuse-configs", "conf/z.yaml",
                 "--config-jobs", jobs, "--overrides", f"eval.tag={jobs}")
        assert _ran(r) == ["evaluate_z"], r.stderr[-2000:]


def test_redo_retrains_from_scratch_and_the_new_model_is_evaluated_again(fake_recipe, repo_root):
    assert _ran(_ser(fake_recipe, repo_root, "--stop-stage", "4")) == ["data", "egemaps", "tokens", "train_m",
                                                                        "evaluate_m"]
    r = _ser(fake_recipe, repo_root, "--stage", "3", "--stop-stage", "3", "--redo", "true")
    calls = (fake_recipe / "calls.log").read_text().splitlines()
    train = [c for c in calls if c.startswith("-m sertk.bin.train")]
    assert _ran(r) == ["train_m"] and len(train) == 1 and train[0].endswith("--fresh")
    # --fresh is not part of the training digest; the retrained model is an input of its evaluation
    r = _ser(fake_recipe, repo_root, "--stage", "3", "--stop-stage", "4")
    assert _ran(r) == ["evaluate_m"] and "inputs changed: exp/m/p/run_digest.json" in r.stderr


def test_stage_1_sees_the_corpus_listing(fake_recipe, repo_root):
    corpus = fake_recipe.parent / "corpus"
    assert _ran(_ser(fake_recipe, repo_root, "--stop-stage", "1")) == ["data"]
    assert _ran(_ser(fake_recipe, repo_root, "--stop-stage", "1")) == []
    (corpus / "spk1" / "3.wav").write_bytes(b"RIFF")  # a file added
    r = _ser(fake_recipe, repo_root, "--stop-stage", "1")
    assert _ran(r) == ["data"] and f"corpus changed: {corpus} (3 -> 4 files" in r.stderr
    (corpus / "spk1" / "0.wav").unlink()  # removed
    assert _ran(_ser(fake_recipe, repo_root, "--stop-stage", "1")) == ["data"]
    st = (corpus / "spk1" / "1.wav").stat()  # replaced: same size, another time
    os.utime(corpus / "spk1" / "1.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _ran(_ser(fake_recipe, repo_root, "--stop-stage", "1")) == ["data"]
    # several roots: repeat the option; a new root is a change too
    (fake_recipe.parent / "csvs").mkdir()
    r = _ser(fake_recipe, repo_root, "--stop-stage", "1", "--corpus-root", str(fake_recipe.parent / "csvs"))
    assert _ran(r) == ["data"]
    marker = json.loads((fake_recipe / "exp/.stages/stage1_data.json").read_text())
    assert sorted(marker["signature"]["corpus"]) == [str(corpus), str(fake_recipe.parent / "csvs")]


def test_stage_1_writes_where_data_says_with_the_python_given(fake_recipe, repo_root):
    r = _ser(fake_recipe, repo_root, "--stop-stage", "1", "--data", "other_data")
    assert (fake_recipe / "other_data" / "train" / "utt2spk").is_file() and not (fake_recipe / "data").exists()
    assert "prep.py other_data" in (fake_recipe / "calls.log").read_text()  # run by --python, not python3
    # a prepare command that ignores $data cannot honour --data: said before anything runs
    env = {**os.environ, "CALLS": str(fake_recipe / "calls.log"), "REAL_PY": sys.executable}
    r = _run(["bash", str(repo_root / "egs/TEMPLATE/ser.sh"), "--python", str(fake_recipe.parent / "fake_python"),
              "--prepare-cmd", "$python prep.py data", "--stage", "1", "--stop-stage", "1", "--data", "d2"],
             fake_recipe, env=env)
    assert r.returncode != 0 and "--data d2: --prepare-cmd does not name $data" in r.stderr


def test_every_recipe_prepares_into_data_with_python_and_lists_its_corpus(repo_root):
    for run_sh in sorted((repo_root / "egs").glob("*/run.sh")):
        text = run_sh.read_text()
        if "--prepare-cmd" not in text:
            continue
        prepare = text.split("--prepare-cmd", 1)[1].split("\n", 1)[0]
        assert '"\\$python ' in prepare and "\\$data" in prepare and "python3" not in prepare, run_sh
        if run_sh.parent.name != "mini_emo":  # its audio is generated
            assert "--corpus-root" in text, run_sh
