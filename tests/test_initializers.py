"""Init schemes: empirical statistics on a large layer match each documented formula."""

import numpy as np
import pytest

from backprop_lab.core.initializers import EXPECTED_STD, INIT_SCHEMES, init_params
from backprop_lab.core.rng import make_rng

SIZES = (400, 900, 700)  # W1 hidden (400 x 900), W2 output (900 x 700): both large


@pytest.mark.parametrize("scheme", [s for s in INIT_SCHEMES if s != "zeros"])
def test_empirical_std_matches_formula(scheme):
    params = init_params(SIZES, scheme, make_rng(0, "init"), std=0.05)
    for layer, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True), start=1):
        W = params[f"W{layer}"]
        expected = EXPECTED_STD[scheme](fan_in, fan_out, layer == len(SIZES) - 1, 0.05)
        assert W.shape == (fan_in, fan_out)
        assert W.std() == pytest.approx(expected, rel=0.02), (scheme, layer)
        assert abs(W.mean()) < 0.01 * expected
        np.testing.assert_array_equal(params[f"b{layer}"], np.zeros(fan_out))


def test_formulas_written_out():
    # The table in the module docstring, independently: fan_in 400, fan_out 900.
    f = {k: v(400, 900, False, 0.01) for k, v in EXPECTED_STD.items()}
    assert f["he"] == np.sqrt(2 / 400)
    assert f["xavier"] == np.sqrt(2 / 1300)
    assert f["xavier_uniform"] == pytest.approx(np.sqrt(6 / 1300) / np.sqrt(3))
    assert f["lecun"] == np.sqrt(1 / 400)
    assert f["normal"] == 0.01
    assert EXPECTED_STD["he_lecun_output"](400, 900, True, 0.01) == np.sqrt(1 / 400)
    assert EXPECTED_STD["he_lecun_output"](400, 900, False, 0.01) == np.sqrt(2 / 400)


def test_xavier_uniform_bounds():
    W = init_params((300, 500, 1), "xavier_uniform", make_rng(0, "init"))["W1"]
    a = np.sqrt(6 / 800)
    assert W.min() >= -a and W.max() <= a
    assert W.min() < -0.99 * a and W.max() > 0.99 * a


def test_zeros_and_names():
    params = init_params((3, 4, 2, 1), "zeros", make_rng(0, "init"))
    assert list(params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert all(not p.any() for p in params.values())


def test_dtype_and_determinism():
    p64 = init_params((5, 8, 1), "he", make_rng(7, "init"))
    p64b = init_params((5, 8, 1), "he", make_rng(7, "init"))
    p32 = init_params((5, 8, 1), "he", make_rng(7, "init"), dtype=np.float32)
    for k in p64:
        np.testing.assert_array_equal(p64[k], p64b[k])
        assert p64[k].dtype == np.float64 and p32[k].dtype == np.float32
        np.testing.assert_array_equal(p32[k], p64[k].astype(np.float32))  # same draw, rounded


@pytest.mark.parametrize("kwargs, match", [
    ({"scheme": "glorot"}, "unknown init scheme 'glorot'; valid: he, xavier"),
    ({"scheme": "normal", "std": -1.0}, "std must be a finite number >= 0"),
    ({"scheme": "he", "dtype": np.int32}, "dtype must be float32 or float64"),
])
def test_bad_arguments_raise_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as exc:
        init_params((2, 3, 1), rng=make_rng(0, "init"), **kwargs)
    assert "\n" not in str(exc.value)
