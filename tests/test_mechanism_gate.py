"""The static gate's numpy filter (issue 11, finding 13): the ways numpy reaches files,
raw memory and C are refused, directly and by the cheap indirections. The gate is a
best-effort filter; tests/test_mechanism_deny.py shows the sandbox contains the same
code when the gate is bypassed."""

from __future__ import annotations

import pytest

from controller.research.level2 import gates
from controller.research.level2.gates import static_check


def mechanism(body: str, header: str = "import numpy as np\n") -> str:
    return f"{header}class M:\n    def context(self, state):\n        {body}\n"


CTYPES_WRITE = mechanism('np.ctypeslib.ctypes.CDLL(None).write(3, b"forged\\n", 7)\n'
                         '        return ""')


@pytest.mark.parametrize(("source", "says"), [
    (CTYPES_WRITE, "'ctypeslib'"),
    (mechanism("return str(np.fromfile('/etc/passwd', dtype=np.uint8))"), "'fromfile'"),
    (mechanism("return str(np.memmap('/tmp/x', mode='w+', shape=(4,)))"), "'memmap'"),
    (mechanism("return str(np.load('/tmp/x.npy', allow_pickle=True))"), "'load'"),
    (mechanism("np.save('/tmp/x.npy', np.zeros(2))\n        return ''"), "'save'"),
    (mechanism("np.zeros(2).tofile('/tmp/x')\n        return ''"), "'tofile'"),
    (mechanism("np.zeros(2).dump('/tmp/x')\n        return ''"), "'dump'"),
    (mechanism("return str(np.zeros(2).ctypes.data)"), "'ctypes'"),
    (mechanism("return str(np.lib.format.open_memmap('/tmp/x'))"), "'lib'"),
    (mechanism("return str(np.lib.stride_tricks.as_strided(np.zeros(1), (9,), (8,)))"),
     "'lib'"),
    (mechanism("return str(np.core.multiarray.fromfile('/etc/passwd'))"), "'core'"),
    (mechanism("n = np\n        return str(n.ctypeslib)"), "'ctypeslib'"),
    (mechanism("return str(ctypeslib)", "from numpy import ctypeslib\n"), "ctypeslib"),
    (mechanism("return str(c)", "import numpy.ctypeslib as c\n"), "'numpy.ctypeslib'"),
    (mechanism("return str(format)", "from numpy.lib import format\n"), "'numpy.lib'"),
    (mechanism("return str(fromfile)", "from numpy import fromfile\n"), "'fromfile'"),
    (mechanism("return str(zeros)", "from numpy import *\n"), "'*'"),
    (mechanism("return str(getattr(np, 'ctypeslib'))"), "'getattr'"),
    (mechanism("return str(__import__('numpy.ctypeslib'))"), "'__import__'"),
    (mechanism("return str(vars(np)['fromfile'])"), "'vars'"),
    (mechanism("return str(np.__dict__)"), "'__dict__'"),
    (mechanism("X = type('X', (), {'__array_interface__': {}})\n        return ''"),
     "type()"),
    ("import numpy as np\nclass M:\n    @property\n    def __array_interface__(self):\n"
     "        return {'data': (8, False), 'shape': (8,), 'typestr': '|u1', 'version': 3}\n"
     "    def context(self, state):\n        return str(np.asarray(self))\n",
     "'__array_interface__'"),
    (mechanism("return str(typing.get_type_hints(M))", "import typing\n"),
     "'get_type_hints'"),
    (mechanism("return str(np.zeros(1))", "import ctypes\nimport numpy as np\n"), "'ctypes'"),
])
def test_deny_numpy_escape_hatches_at_the_static_gate(source: str, says: str) -> None:
    verdict = static_check(source)
    assert not verdict.passed, source
    assert says in verdict.reason, verdict.reason


@pytest.mark.parametrize("body", [
    "return str(np.linalg.norm(np.array([3.0, 4.0])))",
    "return str(np.random.default_rng(1).normal(size=2).tolist())",
    "return json.dumps(np.clip(np.zeros(3), 0, 1).tolist())",
    "return '{} {}'.format(np.mean([1, 2]), self.load_state)",
])
def test_numpy_for_arithmetic_still_passes(body: str) -> None:
    verdict = static_check(mechanism(body, "import json\nimport numpy as np\n"))
    assert verdict.passed, verdict.reason


def test_sensitivity_ctypes_write_passes_a_gate_without_the_numpy_filter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Twin: with the numpy lists emptied (the gate as it was), the ctypes write passes."""
    monkeypatch.setattr(gates, "DENIED_ATTRIBUTES", frozenset())
    monkeypatch.setattr(gates, "DENIED_MODULES", ())
    assert static_check(CTYPES_WRITE).passed
