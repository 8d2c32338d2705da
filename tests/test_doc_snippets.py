"""Every code block of README.md and docs/ that a user would paste (```sh, ```python,
```json) is run or checked here, as written: shell and Python against a real `kd serve`
on the embedded default, in a folder holding the repository's examples and `.venv`;
JSON specs parsed by kdcore's schema. The only changes are the port (the service runs
on a free one: `127.0.0.1:8000` in a block becomes it, KD_URL says it to `kd`) and the
placeholders a block asks the reader to fill in (a job id, an artifact id, a file id).
A block that cannot run on these machines is listed in NOT_RUN with the reason and the
test that covers it instead. A new block fails `test_every_pasteable_block_is_covered`
until it is run here or listed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kdcore.checks.validate import parse_spec
from tests.support.procs import Proc, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PASTEABLE = {"sh", "python", "json"}
served = [pytest.mark.integration, pytest.mark.slow]  # the tests that run blocks


def blocks() -> Iterator[tuple[str, str, str]]:
    """(where: file:first line, language, text) of every fenced block."""
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M):
            indent, lang, body = match.groups()
            body = "\n".join(line[len(indent) :] for line in body.splitlines())
            first = next(line for line in body.splitlines() if line.strip())
            yield f"{path.relative_to(ROOT)}: {first.strip()[:60]}", lang, body


def block(where: str) -> str:
    """The one block that starts as `where` says (file: the opening of its first line)."""
    found = [body for at, _, body in blocks() if at.startswith(where)]
    assert len(found) == 1, f"{where}: {len(found)} blocks"
    return found[0]


# blocks run by this module's tests (by where they start)
RUN = {
    "README.md: .venv/bin/kd submit examples/quickstart_teacher",
    "README.md: mkdir -p out && cat docs/*.md > out/corpus.txt",
    "README.md: from kdservice.client import Client",
    "README.md: .venv/bin/kdcore train examples/quickstart_teacher",
    "docs/api.md: KEY=$(cat data/api_key)",
    "docs/cli-and-client.md: from kdservice.client import Client, ApiError",
    "docs/kdcore.md: import kdcore",
    "docs/kdcore.md: import json, onnx",
    "docs/kdcore.md: kdcore train  SPEC.json",
}
# blocks checked as job specs (whole, or a fragment of one)
SPECS = {
    'README.md: "sweep": {"parameters"',
    "docs/kdcore.md: {",
    'docs/kdcore.md: "sweep": {"parameters"',
    "docs/language-models.md: {",
}
NOT_RUN = {
    "README.md: make run": (
        "the README's two commands: CI runs `make test` itself; tests/test_install.py "
        "checks what `make run` installs and starts (make -n) without a second install"
    ),
    "README.md: # a custom PyTorch model that is in no registry": (
        "needs the user's own `model`: tests/test_examples.py runs it on a stand-in model "
        "(test_the_readmes_onnx_export_snippet_writes_one_file_the_service_accepts)"
    ),
    "README.md: # a Hugging Face model folder": (
        "starts from the user's pretrained `my-vit` (nothing downloads here); "
        "tests/app/test_bring_your_own.py uploads such a folder, zipped, as a teacher"
    ),
    "docs/operations.md: docker run --rm kdservice:cpu --version": (
        "no container engine here; tests/deploy/test_wheel.py runs the Dockerfile's own "
        "build and install commands and every role from the installed wheel"
    ),
    "docs/operations.md: docker compose up -d --build": (
        "no container engine here; tests/deploy/test_compose.py renders both files with "
        "Compose's own parser and checks every command"
    ),
}


def test_every_pasteable_block_is_covered() -> None:
    seen = [where for where, lang, _ in blocks() if lang in PASTEABLE]
    named = RUN | SPECS | set(NOT_RUN)
    uncovered = [at for at in seen if not any(at.startswith(key) for key in named)]
    assert uncovered == [], "a block no test runs; run it here or say why not"
    gone = [key for key in named if sum(at.startswith(key) for at in seen) != 1]
    assert gone == [], "a block named here is no longer in the docs (or is ambiguous)"


def _spec_of(text: str) -> dict:
    """A block's spec: placeholders filled, a fragment ("sweep": ...) put into a job."""
    text = re.sub(r'"<[^">]*>"', '"out/placeholder"', text)
    data = json.loads(text if text.lstrip().startswith("{") else "{" + text + "}")
    if "kind" in data:
        return data
    base = json.loads((ROOT / "examples" / "quickstart_ship.json").read_text())
    return {**{k: v for k, v in base.items() if k not in data}, **data}


@pytest.mark.parametrize("where", sorted(SPECS))
def test_a_spec_in_the_docs_is_a_valid_job(where: str) -> None:
    spec = parse_spec(_spec_of(block(where)))
    assert spec.kind in ("train", "distill")


def test_the_kdcore_synopsis_names_real_subcommands_and_options() -> None:
    synopsis = block("docs/kdcore.md: kdcore train  SPEC.json")
    for line in synopsis.splitlines():
        words = line.split()
        if words[:1] != ["kdcore"]:
            continue
        helped = subprocess.run(
            [sys.executable, "-m", "kdcore.cli", words[1], "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert helped.returncode == 0, helped.stderr
        for option in re.findall(r"--[a-z-]+", line):
            assert option in helped.stdout, (words[1], option)


# ---------- run against a real service ----------


class Sandbox:
    """A folder as a user's checkout looks after `make run`: the examples, `.venv`
    (this environment's), and `kd serve` on the embedded default in it."""

    def __init__(self, root: Path, url: str):
        self.root, self.url = root, url
        base = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
        self.env = {**base, "KD_URL": url, "KD_CONFIG": str(root / "none.json")}
        self.env["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"

    def sh(self, script: str, timeout: float = 900) -> str:
        script = script.replace("127.0.0.1:8000", self.url.removeprefix("http://"))
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def python(self, code: str, timeout: float = 900) -> str:
        return self.sh(f"{sys.executable} - <<'PYTHON'\n{code}\nPYTHON", timeout)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = tmp_path_factory.mktemp("checkout")
    for folder in ("examples", "docs"):  # what a checkout has that the blocks use
        subprocess.run(["cp", "-r", str(ROOT / folder), str(root / folder)], check=True)
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])
    port = free_port()
    proc = Proc(
        ["serve", "--port", str(port)],
        {"KD_DATA_DIR": str(root / "data"), "KD_DATABASE_URL": "", "KD_BROKER_URL": ""},
        root / "serve.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        yield Sandbox(root, url)
    finally:
        proc.stop()


def _job_id(output: str) -> str:
    return re.findall(r"^(job_\w+)$", output, re.M)[0]


@pytest.mark.integration
@pytest.mark.slow
def test_the_readmes_quick_start_twice_through_the_cli_and_the_client(sandbox: Sandbox) -> None:
    """As a user does: the tour, then the tour again in the same folder. The second
    run overwrites its downloads and uploads no second copy of a file."""
    first, *rest = block("README.md: .venv/bin/kd submit examples/quickstart_teacher").splitlines()
    for _ in range(2):
        teacher = _job_id(sandbox.sh(first))
        out = sandbox.sh("\n".join(rest).replace("TEACHER_JOB_ID", teacher))
        assert "succeeded" in out and "quickstart-distill" in out
        assert (sandbox.root / "out/quickstart-teacher/student.safetensors").is_file()
        printed = sandbox.python(block("README.md: from kdservice.client import Client"))
        assert re.search(r"^submitted job_\w+$", printed, re.M) and "epoch 1/" in printed
        assert printed.strip().splitlines()[-1] == "succeeded"
    files = json.loads(sandbox.sh(".venv/bin/kd files list --json"))
    digests = [f["sha256"] for f in files]
    assert digests and len(digests) == len(set(digests)), "a file was uploaded twice"
    sandbox.sh(block("README.md: .venv/bin/kdcore train examples/quickstart_teacher"))
    report = json.loads((sandbox.root / "out/quickstart-distill/report.json").read_text())
    assert report["teacher_preflight"]["passed"] is True


@pytest.mark.integration
@pytest.mark.slow
def test_the_curl_tour_runs_twice_as_written(sandbox: Sandbox) -> None:
    tour = block("docs/api.md: KEY=$(cat data/api_key)")  # the README points to it
    assert "docs/api.md#a-first-job-with-curl" in (ROOT / "README.md").read_text()
    digests = []
    for _ in range(2):  # a second run in the same folder works too
        out = sandbox.sh(tour)
        assert "succeeded" in out
        digest, name = out.strip().splitlines()[-1].split()
        assert len(digest) == 64 and name == "out/student.safetensors"
        digests.append(digest)
    assert (sandbox.root / "out/student.safetensors").is_file()
    assert not (sandbox.root / "student.safetensors").exists()  # nothing in the root
    # step 2 again, as a user re-running it: the same job back, not an error
    prelude = tour.split("# 1.")[0]
    step2 = "# 2." + tour.split("# 2.")[1].split("# 3.")[0]
    jobs = json.loads(sandbox.sh(".venv/bin/kd jobs --json"))
    teacher = next(j["id"] for j in jobs if j["name"] == "digits-teacher")
    script = prelude + f"TEACHER={teacher}\n" + step2 + 'echo "$JOB"\n'
    again = [sandbox.sh(script).strip().splitlines()[-1] for _ in range(2)]
    assert again[0] == again[1] and again[0].startswith("job_")


@pytest.mark.integration
@pytest.mark.slow
def test_the_language_model_quick_start_uses_a_train_jobs_folder_as_teacher(
    sandbox: Sandbox,
) -> None:
    """The README's small first run: a teacher made by a train job, given to the
    distillation by its artifact id, and the student's folder downloaded."""
    corpus, submit_teacher, find_folder, submit_distill, download = block(
        "README.md: mkdir -p out && cat docs/*.md > out/corpus.txt"
    ).splitlines()
    sandbox.sh(corpus)
    teacher = _job_id(sandbox.sh(submit_teacher))
    artifact = sandbox.sh(find_folder.replace("TEACHER_JOB_ID", teacher)).strip()
    assert re.fullmatch(r"art_\w+", artifact), artifact
    out = sandbox.sh(submit_distill.replace("ARTIFACT_ID", artifact))
    distill = _job_id(out)
    assert "succeeded" in out and "tokens/s" in out and "latency" not in out
    job = json.loads(sandbox.sh(f".venv/bin/kd show {distill} --json"))
    assert job["spec"]["teacher"]["checkpoint"] == artifact  # used as is, not uploaded
    report = job["report"]
    assert report["kd_gain_unit"] == "perplexity_ratio"
    assert report["teacher"]["perplexity"] < report["baseline"]["perplexity"]
    listed = sandbox.sh(download.replace("DISTILL_JOB_ID", distill))
    folder = sandbox.root / "out/lm-student/student_hf.zip"
    assert str(folder.relative_to(sandbox.root)) in listed
    with zipfile.ZipFile(folder) as zf:
        assert {"config.json", "model.safetensors"} <= {Path(n).name for n in zf.namelist()}


@pytest.mark.integration
@pytest.mark.slow
def test_the_python_client_guide_runs(sandbox: Sandbox) -> None:
    code = block("docs/cli-and-client.md: from kdservice.client import Client, ApiError")
    # the asyncio part names a `spec` the reader has: the same example, and its main run
    code += "\nimport asyncio, json\nspec = json.load(open('examples/quickstart_teacher.json'))"
    code += "\nasyncio.run(main())\nprint('async done')"
    out = sandbox.python(code)
    assert "async done" in out
    assert (sandbox.root / "out/student.safetensors").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_the_library_calls_and_the_onnx_metadata_recipe_run(sandbox: Sandbox) -> None:
    prelude = (
        "import kdcore\n"
        "spec_dict = {'kind': 'distill', 'teacher': {'arch': 'small_cnn'},\n"
        "             'student': {'arch': 'mlp_small'},\n"
        "             'dataset': {'builtin': 'digits', 'max_samples': 300},\n"
        "             'training': {'epochs': 1}, 'export': ['safetensors', 'onnx']}\n"
        "my_callbacks = kdcore.Callbacks()\n"
    )
    sandbox.python(prelude + block("docs/kdcore.md: import kdcore"))
    graph = sandbox.root / "teacher.onnx"
    graph.write_bytes((sandbox.root / "out/run/student.onnx").read_bytes())
    sandbox.python(block("docs/kdcore.md: import json, onnx"))
    from kdcore.models.onnx import read_preprocessing

    recorded = read_preprocessing(graph)
    assert recorded["input_shape"] == [3, 32, 32]
    assert recorded["normalize"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
