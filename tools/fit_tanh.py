"""Fit the rational float32 tanh of backends/cpu/scalar.py (TANH_P, TANH_Q).

tanh(x) ~= x * P(x^2) / Q(x^2) on [0, 9], P and Q of degree 4, Q(0) = 1. The fit
minimises the relative error: a linearised least-squares problem (P - f Q weighted by
1 / Q of the previous iteration), re-weighted towards the worst points so the result
approaches a minimax fit. Prints the coefficients (in x^2) and the error in float32 ulp.

    python tools/fit_tanh.py
"""
import numpy as np

LIMIT = 9.0          # beyond, float32 tanh rounds to +-1 within an ulp
DEG_P, DEG_Q = 4, 4


def fit(deg_p=DEG_P, deg_q=DEG_Q, limit=LIMIT, iterations=200):
    x = np.unique(np.concatenate([np.linspace(0, limit, 20000),
                                  np.cos(np.linspace(0, np.pi / 2, 20000)) * limit]))
    t = (x / limit) ** 2                        # scaled variable: a well-conditioned fit
    f = np.ones_like(x)
    f[x > 0] = np.tanh(x[x > 0]) / x[x > 0]
    q_prev, weight, best = np.ones_like(t), np.ones_like(t), None
    for it in range(iterations):
        a = np.concatenate([t[:, None] ** np.arange(deg_p + 1),
                            -(f * t)[:, None] * t[:, None] ** np.arange(deg_q)], axis=1)
        row = np.sqrt(weight) / (q_prev * f)
        coef = np.linalg.lstsq(a * row[:, None], f * row, rcond=None)[0]
        p, q = coef[:deg_p + 1], np.concatenate([[1.0], coef[deg_p + 1:]])
        q_prev = np.polyval(q[::-1], t)
        err = (np.polyval(p[::-1], t) / q_prev - f) / f
        worst = np.abs(err).max()
        if best is None or worst < best[0]:
            best = (worst, p, q)
        if it > 10:
            weight = weight * (np.abs(err) / worst + 1e-3) ** 0.5
            weight /= weight.mean()
    worst, p, q = best
    scale = limit ** -2.0 * np.ones(1)
    return worst, p * scale ** np.arange(deg_p + 1), q * scale ** np.arange(deg_q + 1)


if __name__ == "__main__":
    worst, p, q = fit()
    print("TANH_P =", tuple(float(v) for v in p))
    print("TANH_Q =", tuple(float(v) for v in q))
    print(f"relative error {worst:.3g} = {worst / 2.0 ** -24:.2f} float32 ulp")
