import logging
import types

import jwt
import pytest
from opentelemetry import trace

import bioengine_common
from bioengine_common import (
    BioEngineError,
    ConnectionLost,
    NotFound,
    PermissionDenied,
    ResourceUnavailable,
    ServiceUnavailable,
    create_logger,
    error_summary,
    from_remote,
    mask_secrets,
    mint_token,
    setup_telemetry,
    token_claims,
)


def test_create_logger_twice_writes_each_line_once(tmp_path):
    log_file = tmp_path / "logs" / "svc.log"
    create_logger("bioengine.test.dup", log_file=log_file)
    logger = create_logger("bioengine.test.dup", log_file=log_file)
    logger.info("hello once")
    for handler in logger.handlers:
        handler.flush()
    assert log_file.read_text().count("hello once") == 1
    assert len(logger.handlers) == 2


def test_log_lines_carry_the_trace_id_and_mask_tokens(tmp_path):
    setup_telemetry("test", "memory")
    log_file = tmp_path / "t.log"
    logger = create_logger("bioengine.test.trace", logging.DEBUG, log_file)
    token = mint_token("s" * 32, "someone", "ws")
    with trace.get_tracer("t").start_as_current_span("op") as span:
        logger.info("connecting with %s", token)
        logger.debug("url ?token=abcdef123&x=1")
    text = log_file.read_text()
    assert f"{span.get_span_context().trace_id:032x}" in text
    assert token not in text and "abcdef123" not in text
    assert "connecting with ***" in text


def test_mask_secrets_leaves_ordinary_text():
    assert mask_secrets("nothing to hide here") == "nothing to hide here"


def test_exception_tree():
    assert issubclass(NotFound, KeyError) and issubclass(NotFound, FileNotFoundError)
    assert issubclass(PermissionDenied, PermissionError)
    assert issubclass(ConnectionLost, ServiceUnavailable) and issubclass(ServiceUnavailable, ConnectionError)
    for name in ("ConfigurationError", "InvalidRequest", "ResourceUnavailable"):
        assert issubclass(getattr(bioengine_common, name), BioEngineError)
    assert str(NotFound("app 'x' not found")) == "app 'x' not found"
    with pytest.raises(KeyError):
        raise NotFound("gone")


def test_error_summary_takes_the_last_line_of_remote_tracebacks():
    remote = Exception("Traceback (most recent call last):\n  File x\nKeyError: 'Service not found: a'\n")
    assert error_summary(remote) == "KeyError: 'Service not found: a'"
    assert error_summary(TimeoutError()) == "TimeoutError"
    assert error_summary(ValueError("bad")) == "ValueError: bad"


def test_a_remote_bioengine_error_is_rebuilt_with_its_one_line_others_are_not():
    remote = Exception(
        "RemoteError:Traceback (most recent call last):\n"
        '  File "/x/_service.py", line 9, in stop_app\n'
        "    raise NotFound(...)\n"
        "bioengine_common.errors.NotFound: no app 'x' was deployed by this worker\n"
    )
    rebuilt = from_remote(remote)
    assert isinstance(rebuilt, NotFound) and isinstance(rebuilt, KeyError)
    assert str(rebuilt) == "no app 'x' was deployed by this worker"
    assert isinstance(
        from_remote(Exception("bioengine_common.errors.ResourceUnavailable: 64 CPUs")), ResourceUnavailable
    )
    # Not ours, or already local: left alone.
    assert from_remote(Exception("Traceback (most recent call last):\nKeyError: 'Service not found'")) is None
    assert from_remote(PermissionDenied("local")) is None
    assert from_remote(TimeoutError()) is None


def test_minted_tokens_verify_with_the_secret_only():
    token = mint_token("k" * 32, "svc-a", "bioengine", "read_write", expires_in=60)
    claims = jwt.decode(
        token, "k" * 32, algorithms=["HS256"], audience="https://amun-ai.eu.auth0.com/api/v2/"
    )
    assert claims["scope"] == "ws:bioengine#rw wid:bioengine"
    assert token_claims(token)["sub"] == "svc-a"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "x" * 32, algorithms=["HS256"], audience="https://amun-ai.eu.auth0.com/api/v2/")
    with pytest.raises(ValueError):
        token_claims("not-a-token")


def test_public_api_is_exactly_all():
    exported = set(bioengine_common.__all__)
    assert all(hasattr(bioengine_common, name) for name in exported)
    # Submodules (errors, testing, local_stack, cluster_options, ...) become attributes once
    # imported anywhere; they are reached by their own names, not through __all__.
    public = {
        n for n in dir(bioengine_common)
        if n[0] not in "_@" and not isinstance(getattr(bioengine_common, n), types.ModuleType)
    }  # fmt: skip
    assert public == exported, public ^ exported
