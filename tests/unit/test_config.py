"""
Configuration without secrets in argv (issue 16): secrets from the
environment or from files, a warning for one on the command line, the
precedence command line > --config file > environment, the TOML --config
file (kinds, unknown keys, the command line overriding it) and --check.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions

from sse_twisted.tap import SECRETS, Options, makeService


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret leaks in from the environment the tests run in."""
    for _name, _file, env in SECRETS:
        monkeypatch.delenv(env, raising=False)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def refused(*argv: str) -> str:
    """The one-line UsageError message for argv (which must be refused)."""
    with pytest.raises(usage.UsageError) as info:
        parse(*argv)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# --- secrets from the environment -------------------------------------------


def test_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """$SSE_JWT_SECRET, $SSE_PUBLISH_TOKEN and $SSE_REDIS_URL stand in for their options."""
    monkeypatch.setenv("SSE_JWT_SECRET", "jwt-from-env")
    monkeypatch.setenv("SSE_PUBLISH_TOKEN", "token-from-env")
    monkeypatch.setenv("SSE_REDIS_URL", "redis://:pw@127.0.0.1:6379/2")
    options = parse()
    assert options["jwt-secret"] == "jwt-from-env"
    assert options["publish-token"] == "token-from-env"
    assert options["redis"] == "redis://:pw@127.0.0.1:6379/2"
    assert options.warnings == []
    service = makeService(options)
    assert service.broker.relay.address.password == "pw"  # type: ignore[attr-defined]


def test_jwt_secret_from_the_environment_turns_jwt_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """--private-channel is accepted with $SSE_JWT_SECRET alone: the secret is really set."""
    assert "needs --jwt-secret" in refused("--private-channel", "user-*")
    monkeypatch.setenv("SSE_JWT_SECRET", "s")
    assert parse("--private-channel", "user-*")["private-channel"] == ["user-*"]


def test_empty_environment_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty variable (VAR= in a unit or compose file) means no secret, not an empty one."""
    monkeypatch.setenv("SSE_JWT_SECRET", "")
    monkeypatch.setenv("SSE_REDIS_URL", "")
    options = parse()
    assert options["jwt-secret"] is None
    assert options["redis"] is None


def test_bad_redis_url_from_the_environment_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad $SSE_REDIS_URL is refused naming the variable, and its password is not shown."""
    monkeypatch.setenv("SSE_REDIS_URL", "redis://:hunter2@127.0.0.1:notaport/0")
    message = refused()
    assert message.startswith("$SSE_REDIS_URL: ")
    assert "hunter2" not in message


# --- secrets from files ---------------------------------------------------


@pytest.mark.parametrize(
    "content, secret",
    [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("line\n\n", "line\n"),  # one newline only: the rest is the secret's
        ("  spaced  \n", "  spaced  "),
    ],
)
def test_jwt_secret_file(tmp_path: Path, content: str, secret: str) -> None:
    """--jwt-secret-file holds the secret; one trailing newline (LF or CRLF) is dropped."""
    path = write(tmp_path / "jwt", content)
    options = parse("--jwt-secret-file", path)
    assert options["jwt-secret"] == secret
    assert options.warnings == []
    makeService(options)


def test_publish_token_file(tmp_path: Path) -> None:
    """--publish-token-file holds the token, checked as --publish-token is and named."""
    path = write(tmp_path / "token", "t0ken\n")
    assert parse("--publish-token-file", path)["publish-token"] == "t0ken"
    bad = write(tmp_path / "bad", "has space\n")
    assert refused("--publish-token-file", bad) == (
        f"--publish-token-file {bad} must be printable ASCII without spaces "
        "(clients send it in a header)"
    )


@pytest.mark.parametrize("option", ["--jwt-secret-file", "--publish-token-file"])
def test_unreadable_or_empty_secret_file(tmp_path: Path, option: str) -> None:
    """A secret file that is missing, a folder, not UTF-8 or empty is one usage line."""
    missing = str(tmp_path / "missing")
    assert refused(option, missing) == (
        f"cannot read {option} {missing}: No such file or directory"
    )
    assert refused(option, str(tmp_path)).startswith(f"cannot read {option} {tmp_path}: ")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    assert refused(option, str(binary)) == f"{option} {binary} is not UTF-8 text"
    for content in ["", "\n"]:
        empty = write(tmp_path / "empty", content)
        assert refused(option, empty) == f"{option} {empty} is empty"


def test_value_and_file_together_are_refused(tmp_path: Path) -> None:
    """A secret given both as a value and as a file, in one place, is ambiguous: refused."""
    path = write(tmp_path / "s", "x")
    assert refused("--jwt-secret", "a", "--jwt-secret-file", path) == (
        "give --jwt-secret or --jwt-secret-file, not both"
    )
    config = write(tmp_path / "sse.toml", f'publish-token = "a"\npublish-token-file = "{path}"\n')
    assert refused("--config", config) == ("give --publish-token or --publish-token-file, not both")


# --- warnings for secrets in argv -------------------------------------------


def test_secret_on_the_command_line_warns(logged: list[dict[str, Any]]) -> None:
    """A secret in argv works, with a warning logged at start: where it shows, what to use."""
    options = parse("--jwt-secret", "s", "--publish-token", "t")
    assert options["jwt-secret"] == "s"
    assert options["publish-token"] == "t"
    assert options.warnings == [
        "--jwt-secret on the command line can be read by every local user "
        "(ps, /proc/PID/cmdline): use --jwt-secret-file, $SSE_JWT_SECRET or a --config "
        "file instead",
        "--publish-token on the command line can be read by every local user "
        "(ps, /proc/PID/cmdline): use --publish-token-file, $SSE_PUBLISH_TOKEN or a "
        "--config file instead",
    ]
    makeService(options)
    warned = [e for e in logged if e.get("log_level") == LogLevel.warn]
    assert [e["warning"] for e in warned] == options.warnings
    assert not any("'s'" in e["warning"] or "'t'" in e["warning"] for e in warned)


def test_redis_url_warns_only_with_credentials() -> None:
    """--redis warns when its URL carries a password (or user), not otherwise."""
    assert parse("--redis", "redis://127.0.0.1:6379/0").warnings == []
    warnings = parse("--redis", "redis://:pw@127.0.0.1:6379/0").warnings
    assert len(warnings) == 1
    assert warnings[0].startswith("--redis on the command line can be read by every local user")
    assert "$SSE_REDIS_URL" in warnings[0]
    assert "pw" not in warnings[0].replace("(ps", "")


def test_secrets_from_files_environment_or_config_do_not_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only argv warns: a file, the environment and a --config file are not in ps."""
    monkeypatch.setenv("SSE_PUBLISH_TOKEN", "t")
    config = write(tmp_path / "sse.toml", 'jwt-secret = "s"\nredis = "redis://:pw@h:1/0"\n')
    Path(config).chmod(0o600)
    options = parse("--config", config)
    assert (options["jwt-secret"], options["publish-token"]) == ("s", "t")
    assert options.warnings == []


def test_world_readable_config_file_with_a_secret_warns(tmp_path: Path) -> None:
    """A --config file that holds a secret and every user may read is warned about."""
    config = tmp_path / "sse.toml"
    config.write_text('jwt-secret = "s"\nredis = "redis://:pw@h:1/0"\nqueue-size = 3\n')
    config.chmod(0o644)
    assert parse("--config", str(config)).warnings == [
        f"{config} holds jwt-secret, redis and every local user can read it: "
        f"chmod o-r {config}, or name a file that holds the secret instead"
    ]
    config.chmod(0o640)
    assert parse("--config", str(config)).warnings == []
    config.chmod(0o644)
    config.write_text('redis = "redis://h:1/0"\njwt-secret-file = "/dev/null"\n')
    assert (
        parse("--config", str(config), "--jwt-secret-file", write(tmp_path / "s", "s")).warnings
        == []
    )


# --- precedence -------------------------------------------------------------


@pytest.mark.parametrize(
    "env, config, argv, expected",
    [
        ("env", None, [], "env"),
        ("env", 'jwt-secret = "config"', [], "config"),
        ("env", 'jwt-secret-file = "{file}"', [], "file"),
        ("env", 'jwt-secret = "config"', ["--jwt-secret", "argv"], "argv"),
        (None, 'jwt-secret = "config"', ["--jwt-secret-file", "{file}"], "file"),
        (None, 'jwt-secret-file = "{file}"', ["--jwt-secret", "argv"], "argv"),
        ("env", None, ["--jwt-secret-file", "{file}"], "file"),
    ],
)
def test_precedence(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    config: str | None,
    argv: list[str],
    expected: str,
) -> None:
    """
    Command line > --config file > environment, for a secret as a whole: a
    value or a file on the command line replaces the config's value or file.
    """
    file = write(tmp_path / "secret", "file\n")
    if env is not None:
        monkeypatch.setenv("SSE_JWT_SECRET", env)
    args = [a.format(file=file) for a in argv]
    if config is not None:
        args += ["--config", write(tmp_path / "sse.toml", config.format(file=file) + "\n")]
    assert parse(*args)["jwt-secret"] == expected


def test_publish_token_option_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """--publish-token still beats $SSE_PUBLISH_TOKEN (as before the config file)."""
    monkeypatch.setenv("SSE_PUBLISH_TOKEN", "env-token")
    assert parse("--publish-token", "flag")["publish-token"] == "flag"


# --- the config file ------------------------------------------------------

FULL = """
port = 8099
path = "/stream"
private-channel = ["user-*", "admin"]
cors-origin = ["https://app.example"]
jwt-secret = "k"
no-demo = true
access-log = false
queue-size = 10
heartbeat = 2.5
history-ttl = 60
publish-rate = 3
"""


def test_config_file_equals_the_command_line(tmp_path: Path) -> None:
    """Each key of a --config file gives what the same long option would on the command line."""
    from_file = parse("--config", write(tmp_path / "sse.toml", FULL))
    argv = (
        "--port 8099 --path /stream --private-channel user-* --private-channel admin "
        "--cors-origin https://app.example --jwt-secret k --no-demo --queue-size 10 "
        "--heartbeat 2.5 --history-ttl 60 --publish-rate 3"
    )
    from_argv = parse(*argv.split(" "))
    for key in from_argv:
        if key not in ("config",):
            assert from_file[key] == from_argv[key], key
    assert from_file["port"] == "tcp:8099"
    assert from_file["private-channel"] == ["user-*", "admin"]
    assert from_file["no-demo"] and not from_file["access-log"]
    assert from_file["heartbeat"] == 2.5


def test_command_line_overrides_the_config_file(tmp_path: Path) -> None:
    """An option on the command line replaces the file's (a repeatable one as a whole list)."""
    config = write(tmp_path / "sse.toml", FULL)
    options = parse(
        "--config", config, "--port", "tcp:0", "--private-channel", "team-*", "--queue-size", "5"
    )
    assert options["port"] == "tcp:0"
    assert options["private-channel"] == ["team-*"]
    assert options["queue-size"] == 5
    assert options["path"] == "/stream"  # not overridden: from the file
    # The command line may come before --config, and use = or a short option.
    options = parse("-p", "tcp:1", "--config=" + config)
    assert options["port"] == "tcp:1"


def test_config_values_are_checked_as_the_command_line_does(tmp_path: Path) -> None:
    """A value the command line would refuse is refused from the file, naming the file."""
    config = write(tmp_path / "sse.toml", "queue-size = 0\n")
    assert (
        refused("--config", config) == f"{config}: --queue-size must be a positive integer, got 0"
    )
    config = write(tmp_path / "sse.toml", 'port = "nope:1"\n')
    assert refused("--config", config).startswith(f"{config}: --port 'nope:1' is not a usable")
    config = write(tmp_path / "sse.toml", 'private-channel = ["x"]\n')
    assert "--private-channel needs --jwt-secret" in refused("--config", config)


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("privat-channel", "private-channel"),
        ("private_channel", "private-channel"),
        ("jwt-secert", "jwt-secret"),
        ("queuesize", "queue-size"),
        ("zzzz", None),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, key: str, suggestion: str | None) -> None:
    """An unknown key is refused by name, with the closest option when there is one."""
    config = write(tmp_path / "sse.toml", f'port = 1\n{key} = "x"\n')
    message = refused("--config", config)
    hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
    assert message == f"{config}: unknown key {key!r}{hint}"


@pytest.mark.parametrize("key", ["config", "check", "help", "version"])
def test_command_line_only_keys(tmp_path: Path, key: str) -> None:
    """--config and --check (and --help, --version) cannot be set in a config file."""
    config = write(tmp_path / "sse.toml", f"{key} = true\n")
    assert refused("--config", config).startswith(f"{config}: {key!r} ")


def test_twistd_option_in_the_config_file(tmp_path: Path) -> None:
    """A twistd option in the file is named as twistd's, to give before 'sse'."""
    config = write(tmp_path / "sse.toml", 'pidfile = "x.pid"\n')
    with pytest.raises(usage.UsageError) as info:
        ServerOptions().parseOptions(["sse", "--config", config])
    assert str(info.value).startswith(f"{config}: 'pidfile' is ")
    assert str(info.value).endswith("own option: give it on the command line before 'sse'")


@pytest.mark.parametrize(
    "line, words",
    [
        ('no-demo = "yes"', "no-demo must be a boolean (true or false), not a string"),
        ("no-demo = 1", "no-demo must be a boolean (true or false), not an integer"),
        ('queue-size = "10"', "queue-size must be an integer, not a string"),
        ("queue-size = 1.5", "queue-size must be an integer, not a float"),
        ("queue-size = true", "queue-size must be an integer, not a boolean"),
        ('heartbeat = "1"', "heartbeat must be a number, not a string"),
        ("path = 1", "path must be a string, not an integer"),
        ("port = true", "port must be a string or a port number, not a boolean"),
        ("port = 1.5", "port must be a string or a port number, not a float"),
        ('private-channel = "user-*"', "private-channel must be an array of strings, not a string"),
        ("private-channel = [1]", "private-channel must be an array of strings, not an array"),
        ("path = {a = 1}", "path must be a string, not a table"),
        ("path = 1979-05-27", "path must be a string, not a date or time"),
        ("[sse]\nport = 1", "unknown key 'sse'"),
    ],
)
def test_wrong_types(tmp_path: Path, line: str, words: str) -> None:
    """A value of the wrong TOML type is one line naming the file, the key and both types."""
    config = write(tmp_path / "sse.toml", line + "\n")
    assert refused("--config", config) == f"{config}: {words}"


def test_wrong_type_does_not_show_a_secret(tmp_path: Path) -> None:
    """The message for a wrongly typed key names types, never the value (it may be a secret)."""
    config = write(tmp_path / "sse.toml", "jwt-secret = 12345678\n")
    message = refused("--config", config)
    assert "12345678" not in message
    assert message.endswith("jwt-secret must be a string, not an integer")


def test_unreadable_or_invalid_config_file(tmp_path: Path) -> None:
    """A missing, non-UTF-8 or non-TOML --config file is one line saying so (with the place)."""
    missing = str(tmp_path / "missing.toml")
    assert refused("--config", missing) == (
        f"cannot read --config {missing}: No such file or directory"
    )
    bad = write(tmp_path / "bad.toml", 'port = 1\npath = "/x\n')
    message = refused("--config", bad)
    assert message.startswith(f"--config {bad} is not valid TOML: ")
    assert "line 2" in message
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'path = "\xff"\n')
    assert refused("--config", str(binary)).startswith(f"--config {binary} is not")


def test_empty_config_file_changes_nothing(tmp_path: Path) -> None:
    """An empty --config file leaves every default."""
    options = parse("--config", write(tmp_path / "sse.toml", "# nothing yet\n"))
    defaults = parse()
    assert {k: v for k, v in options.items() if k != "config"} == {
        k: v for k, v in defaults.items() if k != "config"
    }


# --- --check --------------------------------------------------------------


def test_check_says_ok_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--check with good options prints one 'ok' line on stdout and exits 0."""
    config = write(tmp_path / "sse.toml", FULL)
    Path(config).chmod(0o600)  # it holds a secret
    with pytest.raises(SystemExit) as info:
        parse("--config", config, "--check")
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert out == "ok: would listen on tcp:8099\n"
    assert err == ""


def test_check_prints_warnings_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """--check shows the start-up warnings (on stderr) as well as 'ok'."""
    with pytest.raises(SystemExit) as info:
        parse("--jwt-secret", "s", "--check")
    assert info.value.code == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok")
    assert err.startswith("warning: --jwt-secret on the command line")


def test_check_refuses_what_start_would(tmp_path: Path) -> None:
    """--check with a bad option, key file or secret file is the usage error start would give."""
    assert "--queue-size" in refused("--queue-size", "0", "--check")
    assert "cannot read --jwt-public-key" in refused(
        "--jwt-public-key", str(tmp_path / "none.pem"), "--check"
    )
    assert "cannot read --jwt-secret-file" in refused(
        "--jwt-secret-file", str(tmp_path / "none"), "--check"
    )


def test_check_builds_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """--check builds the service as start would, so a failure there is a usage error too."""

    def broken(options: Options) -> None:
        raise ValueError("cannot build")

    monkeypatch.setattr("sse_twisted.tap.makeService", broken)
    assert refused("--check") == "cannot build"


def test_the_readmes_config_example(tmp_path: Path) -> None:
    """The README's example config file is accepted (with its secret file present)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    assert "/run/secrets/sse-jwt" in example
    secret = write(tmp_path / "jwt", "s\n")
    config = write(tmp_path / "sse.toml", example.replace("/run/secrets/sse-jwt", secret))
    options = parse("--config", config)
    assert options["private-channel"] == ["user-*", "admin"]
    assert options["jwt-secret"] == "s"
