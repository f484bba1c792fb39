"""BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (Fader, Hardie & Lee 2005b) in numpy/scipy.

Pure functions over arrays: x = repeat purchases, t_x = time of the last purchase since the first,
T = age since the first purchase (any time unit, the same for all), m = mean order value.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

# features a CLV model reads, in the order its MLflow signature lists them
CLV_INPUTS = ("orders_days_lifetime", "days_since_first_order", "days_since_last_order",
              "orders_revenue_lifetime", "orders_count_lifetime")


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
    r, alpha, a, b = np.exp(log_params)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
                      -np.inf)
    ll = a1 + a2 + np.logaddexp(a3, a4)
    return -float(np.sum(weights * ll))


def fit_bgnbd(x, t_x, T, weights=None) -> BgNbd:
    """Maximum likelihood fit (no penalty), optimising log-parameters."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    weights = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    best = None
    for start in (np.zeros(4), np.log([0.5, np.mean(T) or 1.0, 1.0, 1.0])):
        result = minimize(_bgnbd_negll, start, args=(x, t_x, T, weights), method="Nelder-Mead",
                          options={"maxiter": 20000, "maxfev": 20000, "xatol": 1e-7, "fatol": 1e-7})
        if best is None or result.fun < best.fun:
            best = result
    r, alpha, a, b = np.exp(best.x)
    return BgNbd(r=float(r), alpha=float(alpha), a=float(a), b=float(b))


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    v: float

    def expected_value(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Expected mean order value; customers without repeat purchases get the population mean."""
        x, m = np.asarray(x, dtype=float), np.nan_to_num(np.asarray(m, dtype=float))
        population = self.p * self.v / (self.q - 1)
        conditional = self.p * (self.v + x * m) / (self.p * x + self.q - 1)
        return np.where(x > 0, conditional, population)


def _gg_negll(log_params: np.ndarray, x, m) -> float:
    p, q, v = np.exp(log_params)
    ll = (gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v) + (p * x - 1) * np.log(m)
          + (p * x) * np.log(x) - (p * x + q) * np.log(x * m + v))
    return -float(np.sum(ll))


def fit_gamma_gamma(x, m) -> GammaGamma:
    """Fit on customers with at least one repeat purchase and a positive mean value."""
    x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
    keep = (x > 0) & (m > 0)
    if keep.sum() < 3:
        raise ValueError("Gamma-Gamma needs at least 3 customers with repeat purchases")
    result = minimize(_gg_negll, np.zeros(3), args=(x[keep], m[keep]), method="Nelder-Mead",
                      options={"maxiter": 20000, "maxfev": 20000, "xatol": 1e-7, "fatol": 1e-7})
    p, q, v = np.exp(result.x)
    return GammaGamma(p=float(p), q=float(q), v=float(v))
