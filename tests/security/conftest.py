"""Fixtures of the escape battery: every attempt runs once per (tier, privilege) combination usable here.

Tiers: bwrap (tier a) and landlock (tier b) by default; METAGENT_BATTERY_TIERS=bwrap,landlock,unshare,none
adds others; the pseudo-tier "host" (no sandbox at all, unprivileged combination only) shows that every
attempt's evidence sees an escape.
Combinations that cannot run here (no bubblewrap, no Landlock, pytest not root) skip and say why.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .evidence import remove_tree
from .host import Host
from .principal import SECRET_VAR, Principal, Unusable

TIERS = tuple(t for t in os.environ.get("METAGENT_BATTERY_TIERS", "bwrap,landlock").split(",") if t)
PRIVILEGES = ("user", "root")
COMBINATIONS = [(tier, privilege) for tier in TIERS for privilege in PRIVILEGES]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: an escape attempt that takes seconds per combination")


class Principals:
    """One Principal per privilege, made on first use and closed at the end of the session."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="metagent-battery-", dir="/tmp"))
        self.base.chmod(0o711)  # the sandbox uids must reach their directories inside
        self.made: dict[str, Principal | str] = {}

    def get(self, privilege: str) -> Principal:
        if privilege not in self.made:
            try:
                self.made[privilege] = Principal(privilege, self.base)
            except Unusable as e:
                self.made[privilege] = str(e)
        found = self.made[privilege]
        if isinstance(found, str):
            pytest.skip(f"{privilege}: {found}")
        return found

    def close(self) -> None:
        for principal in self.made.values():
            if isinstance(principal, Principal):
                principal.close()
        remove_tree(self.base)


def new_workspace(principal: Principal) -> Path:
    workspace = Path(tempfile.mkdtemp(prefix="ws-", dir=principal.dir))
    workspace.chmod(0o755)
    if principal.dedicated_uid is not None:
        os.chown(workspace, principal.dedicated_uid, principal.dedicated_uid)
    return workspace


def runs_code(principal: Principal, tier: str) -> str | None:
    """Why an attempt's code cannot run at all in this combination, or None: without this check every
    attempt would pass for the wrong reason. Cached per principal and tier."""
    if tier not in principal.canaries:
        workspace = new_workspace(principal)
        try:
            out = Host(principal, tier, workspace).run('save("canary", "ok")', timeout_s=20.0)
            ran = (workspace / "canary").exists() and (workspace / "canary").read_text() == "ok"
            principal.canaries[tier] = None if ran else f"a plain attempt did not run: {out.stderr.strip()[-400:]}"
        finally:
            remove_tree(workspace)
    return principal.canaries[tier]


@pytest.fixture(scope="session")
def principals() -> Iterator[Principals]:
    made = Principals()
    yield made
    made.close()


@pytest.fixture(params=COMBINATIONS, ids=[f"{t}-{p}" for t, p in COMBINATIONS])
def host(request: pytest.FixtureRequest, principals: Principals, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    tier, privilege = request.param
    if tier == "host" and privilege == "root":
        pytest.skip("the host pseudo-tier runs attempts unsandboxed: only ever as the dedicated unprivileged uid")
    principal = principals.get(privilege)
    principal.revive()
    problem = principal.problem(tier) or runs_code(principal, tier)
    if problem is not None:
        pytest.skip(f"{tier} is not usable for the {privilege} combination here: {problem}")
    if principal.in_process:
        monkeypatch.setenv(SECRET_VAR, principal.secrets.env)  # a secret in the host process's environment
    attempt = Host(principal, tier, new_workspace(principal))
    workspace = attempt.workspace
    try:
        yield attempt
    finally:
        attempt.kill_leftovers()
        if attempt.changed():
            principal.replant()  # an attempt escaped and changed the home: the next ones start clean
        remove_tree(workspace)
