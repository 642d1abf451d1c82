"""What the wheel and the README promise, held to the code: every package is in the wheel, the
data contract table is the one `check` uses, the GitHub Actions guide's manual run runs."""

from __future__ import annotations

import re
import tomllib

from listener.contract import APP_COLUMNS
from tests.processes import REPO

README = (REPO / "README.md").read_text()


def test_every_package_of_the_floors_is_listed_for_the_wheel() -> None:
    """pyproject lists the packages by hand (for sql/'s mapping): a new one must not be left out."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for floor in ("core", "handlers", "listener", "scheduler")
        for init in (REPO / floor).rglob("__init__.py")
    }
    assert set(config["packages"]) == on_disk | {"listener.migrations"}
    assert config["package-dir"] == {"listener.migrations": "sql"}


def test_the_readme_data_contract_is_the_one_check_verifies() -> None:
    section = README[README.index("| table | columns read |"):]
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", section[: section.index("\n\n")], re.M)
    documented = {table: tuple(re.findall(r"`(\w+)`", columns)) for table, columns in rows}
    assert documented == APP_COLUMNS


def test_the_github_actions_guide_runs_both_jobs_on_a_manual_run_against_a_variable_url() -> None:
    workflow = README[README.index("name: Cron Jobs"):]
    workflow = workflow[: workflow.index("```")]
    conditions = re.findall(r"^\s+if: (.+)$", workflow, re.M)
    assert len(conditions) == 2
    assert all(cond.startswith("github.event_name == 'workflow_dispatch' || ") for cond in conditions)
    urls = re.findall(r'"([^"]*/api/cron/\w+)"', workflow)
    assert urls == ["${{ vars.WORKER_URL }}/api/cron/cleanup", "${{ vars.WORKER_URL }}/api/cron/reminders"]
