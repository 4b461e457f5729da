"""``nni-lease``'s log handler: NNI's messages without colour codes, each once; library chatter on --verbose."""

import logging
import warnings

import nni  # noqa: F401  (NNI's own handler is installed at import; cli_logging must give it back)
import pytest

from nni_lease._cli_logging import cli_logging


@pytest.mark.parametrize("verbose", [False, True])
def test_nni_messages_plain_and_once(capsys, verbose):
    nni_logger = logging.getLogger("nni.nas.experiment")
    before = logging.getLogger("nni").handlers[:]
    with cli_logging(verbose=verbose):
        for _ in range(5):
            nni_logger.warning("`training_service` will be ignored for ${GREEN}sequential${RESET} execution engine.")
        nni_logger.info("Config is not provided. Will try to infer.")
        logging.getLogger("nni_lease.oneshot").info("search epoch 1/1")
        warnings.warn_explicit("harmless", RuntimeWarning, "/site-packages/nni/nas/nn/pytorch/layers.py", 94)
        warnings.warn_explicit("yours", UserWarning, "/home/me/train.py", 3)
    captured = capsys.readouterr()
    out, err = captured.out, captured.err  # NNI's lines on stdout, where NNI writes them; nni_lease's on stderr
    expected = "WARNING nni.nas.experiment: `training_service` will be ignored for sequential execution engine."
    assert out.splitlines().count(expected) == 1 and expected not in err
    assert "${" not in out + err and "\x1b[" not in out + err
    assert "INFO nni_lease.oneshot: search epoch 1/1" in err.splitlines()
    assert ("Config is not provided" in out) == verbose
    assert ("harmless" in err) == verbose
    assert "yours" in err
    assert logging.getLogger("nni").handlers == before  # NNI's own handlers come back


@pytest.mark.parametrize("verbose", [False, True])
def test_library_tracebacks_only_when_verbose(capsys, verbose):
    """A dead manager makes NNI log connection tracebacks: the user reads nni-lease's own one-line error instead."""
    with cli_logging(verbose=verbose):
        try:
            raise ConnectionRefusedError("Connect call failed")
        except ConnectionRefusedError:
            logging.getLogger("nni.runtime.command_channel").warning("Failed to receive command.", exc_info=True)
            logging.getLogger("nni_lease.runtime").exception("own failure")
    captured = capsys.readouterr()
    assert "WARNING nni.runtime.command_channel: Failed to receive command." in captured.out
    assert ("Traceback" in captured.out) == verbose
    assert "Traceback" in captured.err  # nni_lease's own records keep theirs
