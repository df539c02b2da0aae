"""Escape attempts through the network, unix sockets, other ways of running code, and the kernel's
riskier interfaces (user namespaces, io_uring).

Every listener is the host's own, bound on loopback (or a unix socket the sandbox user could reach) and
closed at the end of its test; the backdoor attempts have the sandboxed code listen and the host try to
connect while the call runs. Evidence: what the listeners received, marker files, the process table.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .evidence import Listener, can_connect, listening, namespaces, open_file_kinds
from .host import Host, assert_ended

CONNECT = """
import socket
family = {family}
for attempt_number in range(3):
    try:
        s = socket.socket(family, socket.{kind})
        s.settimeout(0.5)
        if socket.{kind} == socket.SOCK_STREAM:
            s.connect({address!r})
            s.sendall(TAG.encode())
        else:
            s.sendto(TAG.encode(), {address!r})
        s.close()
    except OSError:
        pass
"""


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def reach(host: Host, listener: Listener, family: str, kind: str) -> bool:
    address = listener.address[:2] if isinstance(listener.address, tuple) else listener.address
    out = host.run(CONNECT.format(family=family, kind=kind, address=address))
    assert_ended(out)
    return listener.reached()


@pytest.mark.parametrize("kind", ["SOCK_STREAM", "SOCK_DGRAM"], ids=["tcp", "udp"])
def test_loopback_ipv4(host: Host, kind: str) -> None:
    with listening(socket.AF_INET, getattr(socket, kind), ("127.0.0.1", 0)) as listener:
        assert not reach(host, listener, "socket.AF_INET", kind), "the host's 127.0.0.1 listener was reached"


@pytest.mark.parametrize("kind", ["SOCK_STREAM", "SOCK_DGRAM"], ids=["tcp", "udp"])
def test_loopback_ipv6(host: Host, kind: str) -> None:
    if not has_ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback")
    with listening(socket.AF_INET6, getattr(socket, kind), ("::1", 0)) as listener:
        assert not reach(host, listener, "socket.AF_INET6", kind), "the host's [::1] listener was reached"


def test_abstract_unix_socket(host: Host) -> None:
    with listening(socket.AF_UNIX, socket.SOCK_STREAM, f"\0metagent-battery-{host.tag}") as listener:
        assert not reach(host, listener, "socket.AF_UNIX", "SOCK_STREAM"), "an abstract unix socket was reached"


def test_path_unix_socket(host: Host) -> None:
    path = host.principal.open_dir / f"{host.tag}.sock"
    with listening(socket.AF_UNIX, socket.SOCK_STREAM, str(path)) as listener:
        path.chmod(0o777)  # anyone may connect: only the sandbox stands in the way
        try:
            assert not reach(host, listener, "socket.AF_UNIX", "SOCK_STREAM"), f"{path} was reached"
        finally:
            path.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_listening_backdoor(host: Host) -> None:
    """The sandboxed code listens on a port (every address); the host tries to connect during the call."""
    port = free_port()
    reached: list[tuple[str, int]] = []

    def knock() -> None:
        reached.extend(a for a in (("127.0.0.1", port),) if can_connect(socket.AF_INET, a))
        if has_ipv6_loopback():
            reached.extend(a for a in (("::1", port),) if can_connect(socket.AF_INET6, a))

    out = host.run(f"""
        import socket
        held = []
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                s = socket.socket(family)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, {port}))
                s.listen(8)
                held.append(s)
            except OSError:
                pass
        time.sleep(0.5)
    """, watch=knock)  # fmt: skip
    assert_ended(out)
    assert reached == [], f"the host connected to a listener inside the sandbox at {reached}"


def test_abstract_unix_backdoor(host: Host) -> None:
    name = f"\0metagent-backdoor-{host.tag}"
    reached: list[int] = []
    out = host.run(f"""
        import socket
        try:
            s = socket.socket(socket.AF_UNIX)
            s.bind({name!r})
            s.listen(8)
        except OSError:
            pass
        time.sleep(0.5)
    """, watch=lambda: reached.extend([1] if can_connect(socket.AF_UNIX, name) else []))  # fmt: skip
    assert_ended(out)
    assert reached == [], "the host connected to an abstract unix socket the sandbox listened on"


@contextlib.contextmanager
def markers(host: Host) -> Iterator[list[Path]]:
    """Paths a shell command run from the sandbox would write if it reached the host."""
    paths = [host.principal.open_dir / f"{host.tag}-sh", Path("/tmp") / f"{host.tag}-sh"]
    try:
        yield paths
    finally:
        for p in paths:
            p.unlink(missing_ok=True)


SHELL = "cat {key} > stolen; echo pwned > {open_dir}/{tag}-sh; echo pwned > /tmp/{tag}-sh"


def shell_line(host: Host) -> str:
    p = host.params()
    return SHELL.format(key=p["key"], open_dir=p["open_dir"], tag=host.tag)


def test_os_system(host: Host) -> None:
    with markers(host) as paths:
        out = host.run(f"os.system({shell_line(host)!r})\nos.popen({shell_line(host)!r}).read()\n")
        assert_ended(out)
        assert [p for p in paths if p.exists()] == [] and host.exposed() == []


def test_ctypes_system(host: Host) -> None:
    with markers(host) as paths:
        out = host.run(f"LIBC.system({shell_line(host)!r}.encode())\n")
        assert_ended(out)
        assert [p for p in paths if p.exists()] == [] and host.exposed() == []


def test_subclasses_walk(host: Host) -> None:
    """The classic jail break: reach os.system and subprocess.Popen from ().__class__ without importing."""
    with markers(host) as paths:
        out = host.run(f"""
            line = {shell_line(host)!r}
            for cls in ().__class__.__base__.__subclasses__():
                if cls.__name__ == "_wrap_close":
                    cls.__init__.__globals__["system"](line)
                if cls.__name__ == "Popen":
                    attempt(lambda: cls(["/bin/sh", "-c", line]).wait())
        """)  # fmt: skip
        assert_ended(out)
        assert [p for p in paths if p.exists()] == [] and host.exposed() == []


def test_create_user_namespace(host: Host) -> None:
    """The host compares the user namespaces of the attempt's processes while it runs: a child that
    unshared one shows a second namespace."""
    seen: set[str] = set()

    def look() -> None:
        seen.update(ns for ns in (namespaces(p.pid, "user") for p in host.tagged()) if ns)

    out = host.run("""
        if os.fork() == 0:
            if LIBC.unshare(0x10000000) != 0:  # CLONE_NEWUSER
                LIBC.syscall(272, 0x10000000)  # the raw system call, in case the wrapper is filtered
            time.sleep(0.5)
            os._exit(0)
        time.sleep(0.5)
        os.wait()
    """, watch=look)  # fmt: skip
    assert_ended(out)
    assert len(seen) <= 1, f"a new user namespace was created: {sorted(seen)}"


def test_io_uring(host: Host) -> None:
    """The host looks for an io_uring instance among the attempt's descriptors while it runs."""
    rings: set[int] = set()

    def look() -> None:
        rings.update(p.pid for p in host.tagged() if any("io_uring" in k for k in open_file_kinds(p.pid)))

    out = host.run("""
        params = ctypes.create_string_buffer(120)
        fd = LIBC.syscall(425, 8, params)  # io_uring_setup(8 entries)
        time.sleep(0.5)
    """, watch=look)  # fmt: skip
    assert_ended(out)
    assert rings == set(), "an io_uring instance was created"
