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
    err = capsys.readouterr().err
    lines = err.splitlines()
    expected = "WARNING nni.nas.experiment: `training_service` will be ignored for sequential execution engine."
    assert lines.count(expected) == 1
    assert "${" not in err and "\x1b[" not in err
    assert "INFO nni_lease.oneshot: search epoch 1/1" in lines
    assert ("Config is not provided" in err) == verbose
    assert ("harmless" in err) == verbose
    assert "yours" in err
    assert logging.getLogger("nni").handlers == before  # NNI's own handlers come back
