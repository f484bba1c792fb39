"""BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader, Hardie & Lee 2005b) in numpy/scipy.

Pure functions over arrays, any time unit (the same for all; ``cdp`` uses days):

* ``x``   repeat purchases: purchase *days* after the first one (orders on one day count once, as in
  the papers' CDNOW data);
* ``t_x`` time of the last purchase since the first (0 when x = 0);
* ``T``   age: time from the first purchase to the end of the calibration period;
* ``m``   mean value of the *repeat* purchases (the x days after the first; the first purchase is not
  in it: the Gamma-Gamma model is defined on the transactions the BG/NBD part counts).

The T convention. A feature snapshot "as of D" holds everything strictly before D 00:00, and
``days_since_first_order`` = D - first purchase day. The papers count T to the *last day* of the
calibration period (CDNOW: week 39 ends 1997-09-30, the snapshot is as of 1997-10-01), so their T is
one day less. ``age_convention`` chooses: ``as_of`` (T = D - first day, the default: a customer who
first bought yesterday has T = 1 day, not 0) or ``last_day`` (T = D - 1 - first day, the papers'; the
CDNOW test uses it and reproduces their parameters). t_x is the same under both.

Fits maximise the likelihood over log-parameters from several starts and check convergence
(:func:`converged_fit`): a fit that does not converge raises :class:`NotConverged` instead of
returning parameters nobody should use.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

# features a CLV model reads, in the order its MLflow signature lists them
CLV_INPUTS = ("orders_days_lifetime", "days_since_first_order", "days_since_last_order",
              "orders_revenue_lifetime", "orders_first_day_revenue")
AgeConvention = Literal["as_of", "last_day"]

# Convergence thresholds (on the mean negative log-likelihood per customer, over log-parameters)
GRADIENT_TOLERANCE = 1e-4   # max |d mean-NLL / d log-parameter| at the optimum
AGREEMENT_TOLERANCE = 1e-3  # relative difference of the parameters of the starts that reach the optimum
LOG_BOUND = 18.0            # |log parameter| beyond this (about 6.6e7 or 1.5e-8) is a run-away, not an optimum


class NotConverged(ValueError):
    """The maximum-likelihood fit did not converge; the message says which check failed."""


@dataclass(frozen=True)
class FitDiagnostics:
    """How a fit was checked: the optimiser's verdict, the gradient at the optimum, the starts."""

    negll: float                 # mean negative log-likelihood per customer at the optimum
    gradient: float              # max |gradient| of the mean NLL over log-parameters at the optimum
    starts: int                  # starts tried
    agreeing: int                # starts that reached the optimum with the same parameters
    spread: float                # max relative difference of their parameters
    message: str                 # the optimiser's message for the best start


def _numeric_gradient(f: Callable[[np.ndarray], float], at: np.ndarray, step: float = 1e-5) -> np.ndarray:
    grad = np.empty_like(at)
    for i in range(len(at)):
        e = np.zeros_like(at)
        e[i] = step
        grad[i] = (f(at + e) - f(at - e)) / (2 * step)
    return grad


def converged_fit(negll: Callable[[np.ndarray], float], starts: Sequence[np.ndarray], what: str,
                  names: Sequence[str]) -> tuple[np.ndarray, FitDiagnostics]:
    """Minimise ``negll`` (the *mean* NLL over log-parameters) from each start: Nelder-Mead, then
    L-BFGS-B from where it stopped. Returns the best log-parameters if

    1. the optimiser reports success for the best start,
    2. the gradient there is below ``GRADIENT_TOLERANCE`` and no parameter ran away (``LOG_BOUND``),
    3. at least two starts reach the same optimum (objective within 1e-7, parameters within
       ``AGREEMENT_TOLERANCE``);

    otherwise raises :class:`NotConverged` naming the check, the parameters and the numbers.
    """
    results = []
    for start in starts:
        # quasi-Newton to the optimum, then a simplex from there: it needs no gradient, so it also
        # settles where L-BFGS-B stops on a numerical-precision plateau
        descent = minimize(negll, np.asarray(start, dtype=float), method="L-BFGS-B",
                           bounds=[(-LOG_BOUND - 2, LOG_BOUND + 2)] * len(start),
                           options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-9})
        simplex = minimize(negll, descent.x, method="Nelder-Mead",
                           options={"maxiter": 4000, "maxfev": 4000, "xatol": 1e-8, "fatol": 1e-12})
        best_of_two = simplex if simplex.fun <= descent.fun else descent
        results.append((best_of_two, bool(descent.success or simplex.success),
                        f"L-BFGS-B: {descent.message}; Nelder-Mead: {simplex.message}"))
    results.sort(key=lambda item: item[0].fun)
    best, success, message = results[0]
    shown = ", ".join(f"{n} {v:.6g}" for n, v in zip(names, np.exp(best.x), strict=True))
    if not np.isfinite(best.fun):
        raise NotConverged(f"{what}: the likelihood is not finite at any start ({shown})")
    if not success:
        raise NotConverged(f"{what}: the optimiser did not converge ({message}); stopped at {shown}")
    if np.any(np.abs(best.x) >= LOG_BOUND):
        raise NotConverged(f"{what}: a parameter runs away to the bound ({shown}): the data do not identify "
                           "the model (e.g. no spread in the values)")
    gradient = float(np.max(np.abs(_numeric_gradient(negll, best.x))))
    if gradient > GRADIENT_TOLERANCE:
        raise NotConverged(f"{what}: gradient {gradient:.2e} at the optimum exceeds {GRADIENT_TOLERANCE:g} "
                           f"({shown})")
    reached = [r for r, _, _ in results if r.fun - best.fun <= 1e-7 * max(1.0, abs(best.fun))]
    params = np.exp(np.array([r.x for r in reached]))
    spread = float(np.max(np.abs(params / np.exp(best.x) - 1))) if len(reached) else float("inf")
    if len(reached) < 2 or spread > AGREEMENT_TOLERANCE:
        raise NotConverged(f"{what}: only {len(reached)} of {len(results)} starts reach the optimum with the "
                           f"same parameters (spread {spread:.2e}; {shown})")
    return best.x, FitDiagnostics(negll=float(best.fun), gradient=gradient, starts=len(results),
                                  agreeing=len(reached), spread=spread, message=message)


@dataclass(frozen=True)
class BgNbd:
    r: float
    alpha: float
    a: float
    b: float

    def expected_purchases(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Expected purchases in the next ``t`` periods given each customer's history."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        _a, _b, _c = r + x, b + x, a + b + x - 1
        z = t / (alpha + T + t)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            hyp = hyp2f1(_a, _b, _c, z)
            ln_hyp = np.where(np.isfinite(hyp) & (hyp > 0), np.log(np.where(hyp > 0, hyp, 1.0)),
                              np.log(hyp2f1(_c - _a, _c - _b, _c, z)) + (_c - _a - _b) * np.log(1 - z))
            first = (a + b + x - 1) / (a - 1)
            second = 1 - np.exp(ln_hyp + (r + x) * np.log((alpha + T) / (alpha + t + T)))
            denominator = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        return first * second / denominator


def _bgnbd_negll(log_params: np.ndarray, x, t_x, T, weights) -> float:
    with np.errstate(all="ignore"):  # a run-away start overflows: scored as +inf, the checks report it
        r, alpha, a, b = np.exp(log_params)
        a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        a2 = betaln(a, b + x) - betaln(a, b)
        a3 = -(r + x) * np.log(alpha + T)
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
                      -np.inf)
        ll = a1 + a2 + np.logaddexp(a3, a4)
        value = -float(np.sum(weights * ll)) / float(np.sum(weights))
    return value if np.isfinite(value) else 1e300


def fit_bgnbd_checked(x, t_x, T, weights=None) -> tuple[BgNbd, FitDiagnostics]:
    """Maximum likelihood fit (no penalty) with the convergence checks of :func:`converged_fit`."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    weights = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if len(x) == 0:
        raise NotConverged("BG/NBD: no customers to fit")
    # customers with the same (x, t_x, T) contribute the same term: fit on the distinct ones, weighted
    # (in days most of them repeat: everyone without a repeat purchase has t_x = 0)
    distinct, inverse = np.unique(np.column_stack([x, t_x, T]), axis=0, return_inverse=True)
    weights = np.bincount(inverse.ravel(), weights=weights)
    x, t_x, T = distinct[:, 0], distinct[:, 1], distinct[:, 2]
    mean_t = float(np.average(T, weights=weights)) or 1.0
    starts = [np.zeros(4), np.log([0.5, mean_t, 1.0, 1.0]), np.log([2.0, mean_t / 4 or 1.0, 0.5, 3.0])]
    best, diagnostics = converged_fit(lambda p: _bgnbd_negll(p, x, t_x, T, weights), starts, "BG/NBD",
                                      ("r", "alpha", "a", "b"))
    r, alpha, a, b = np.exp(best)
    return BgNbd(r=float(r), alpha=float(alpha), a=float(a), b=float(b)), diagnostics


def fit_bgnbd(x, t_x, T, weights=None) -> BgNbd:
    """:func:`fit_bgnbd_checked` without its diagnostics."""
    return fit_bgnbd_checked(x, t_x, T, weights)[0]


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    v: float

    def expected_value(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Expected mean value of a customer's future transactions, from x repeat transactions of mean
        value m; customers without repeat purchases get the population mean p v / (q - 1)."""
        x, m = np.asarray(x, dtype=float), np.nan_to_num(np.asarray(m, dtype=float))
        population = self.p * self.v / (self.q - 1)
        conditional = self.p * (self.v + x * m) / (self.p * x + self.q - 1)
        return np.where(x > 0, conditional, population)


def _gg_negll(log_params: np.ndarray, x, m) -> float:
    with np.errstate(all="ignore"):  # a run-away start overflows: scored as +inf, the checks report it
        p, q, v = np.exp(log_params)
        ll = (gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v) + (p * x - 1) * np.log(m)
              + (p * x) * np.log(x) - (p * x + q) * np.log(x * m + v))
        value = -float(np.mean(ll))
    return value if np.isfinite(value) else 1e300


def fit_gamma_gamma_checked(x, m) -> tuple[GammaGamma, FitDiagnostics]:
    """Fit on customers with at least one repeat purchase and a positive mean repeat value, with the
    convergence checks of :func:`converged_fit`."""
    x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
    keep = (x > 0) & (m > 0) & np.isfinite(m)
    if keep.sum() < 3:
        raise NotConverged(f"Gamma-Gamma needs at least 3 customers with repeat purchases, has {int(keep.sum())}")
    x, m = x[keep], m[keep]
    mean = float(np.mean(m))
    starts = [np.zeros(3), np.log([2.0, 3.0, mean]), np.log([10.0, 2.0, mean / 2])]
    best, diagnostics = converged_fit(lambda p: _gg_negll(p, x, m), starts, "Gamma-Gamma", ("p", "q", "v"))
    p, q, v = np.exp(best)
    if q <= 1:
        raise NotConverged(f"Gamma-Gamma: q {q:.4g} <= 1: the population mean value p v / (q - 1) is undefined")
    return GammaGamma(p=float(p), q=float(q), v=float(v)), diagnostics


def fit_gamma_gamma(x, m) -> GammaGamma:
    """:func:`fit_gamma_gamma_checked` without its diagnostics."""
    return fit_gamma_gamma_checked(x, m)[0]
