"""What a run ran on: the code's git commit, timestamps."""

import datetime
import shutil
import subprocess

import pytest

from agpnet.environment import source_revision, timestamp


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_revision_is_the_commit_and_says_when_the_code_changed(tmp_path):
    package = tmp_path / "agpnet"
    package.mkdir()
    (package / "model.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert source_revision(package) == head

    (package / "notes.txt").write_text("untracked\n")  # untracked files are not a code change
    (tmp_path / "README.md").write_text("changed docs\n")  # nor are changes outside the package
    assert source_revision(package) == head
    (package / "model.py").write_text("x = 2\n")
    assert source_revision(package) == head + "+dirty"


def test_source_revision_outside_git_or_without_git_is_none(tmp_path, monkeypatch):
    assert source_revision(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git program at all
    assert source_revision() is None


def test_timestamp_is_iso_8601_with_offset_to_the_second():
    value = datetime.datetime.fromisoformat(timestamp())
    assert value.tzinfo is not None and value.microsecond == 0
    assert abs((datetime.datetime.now(datetime.timezone.utc) - value).total_seconds()) < 5
