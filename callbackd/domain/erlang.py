"""Erlang-A (M/M/c+M): a queue of impatient callers, the closed form the simulator is checked against.

Arrivals Poisson (rate ``lam``), talk times exponential (rate ``mu``), ``c`` operators, and each
caller's patience exponential (rate ``theta``): the caller hangs up unanswered once it runs out.
Two independent computations are given, so each checks the other:

- :func:`birth_death`: the stationary distribution of the number in the system, a birth-death chain
  (birth ``lam``, death ``min(n, c) mu + max(n - c, 0) theta``) summed until the terms vanish;
- :func:`closed_form`: Mandelbaum and Zeltyn's formulas ("The Palm/Erlang-A queue, with applications
  to call centers", 2004) built on Erlang B and ``A(x, y) = x e^y y^-x gamma(x, y)``.

All rates per the same time unit; waits come out in it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErlangA:
    p_wait: float  # P(W > 0): an arrival finds every operator busy
    p_abandon: float  # P(Ab): an arrival hangs up unanswered
    mean_wait: float  # E[W] over all arrivals, answered or not (Little: E[queue] / lam)
    mean_queue: float  # E[number waiting]
    occupancy: float  # E[busy operators] / c

    @property
    def p_abandon_given_wait(self) -> float:
        return self.p_abandon / self.p_wait if self.p_wait else 0.0


def birth_death(lam: float, mu: float, theta: float, c: int, tol: float = 1e-15) -> ErlangA:
    """By the chain itself (needs ``theta > 0``: the queue is then stable at any load)."""
    if min(lam, mu, theta) <= 0 or c < 1:
        raise ValueError("lam, mu and theta must be positive and c at least 1")
    weights = [1.0]
    n = 0
    while True:
        n += 1
        w = weights[-1] * lam / (min(n, c) * mu + max(n - c, 0) * theta)
        weights.append(w)
        if n > c and w < tol * sum(weights):
            break
    total = sum(weights)
    pi = [w / total for w in weights]
    p_wait = sum(pi[c:])
    queue = sum((k - c) * p for k, p in enumerate(pi) if k > c)
    busy = sum(min(k, c) * p for k, p in enumerate(pi))
    return ErlangA(
        p_wait=p_wait,
        p_abandon=theta * queue / lam,
        mean_wait=queue / lam,
        mean_queue=queue,
        occupancy=busy / c,
    )


def erlang_b(c: int, load: float) -> float:
    """Blocking probability of c servers offered ``load`` Erlangs (the stable recursion)."""
    b = 1.0
    for k in range(1, c + 1):
        b = load * b / (k + load * b)
    return b


def a_function(x: float, y: float, tol: float = 1e-16) -> float:
    """``A(x, y) = x e^y y^-x gamma(x, y)`` as its series: sum over k of y^k / ((x + 1) ... (x + k))."""
    total, term, k = 1.0, 1.0, 0
    while True:
        k += 1
        term *= y / (x + k)
        total += term
        if term < tol * total and k > y - x:
            return total


def closed_form(lam: float, mu: float, theta: float, c: int) -> ErlangA:
    """Mandelbaum and Zeltyn (2004), section 3: P(W > 0), P(Ab | W > 0) and E[W]."""
    if min(lam, mu, theta) <= 0 or c < 1:
        raise ValueError("lam, mu and theta must be positive and c at least 1")
    rho = lam / (c * mu)
    e = erlang_b(c, lam / mu)
    a = a_function(c * mu / theta, lam / theta)
    p_wait = a * e / (1 + (a - 1) * e)
    p_ab_wait = 1 / (rho * a) + 1 - 1 / rho
    p_abandon = p_ab_wait * p_wait
    mean_wait = p_abandon / theta  # E[W] = P(Ab) / theta for exponential patience
    served = lam * (1 - p_abandon)
    return ErlangA(
        p_wait=p_wait,
        p_abandon=p_abandon,
        mean_wait=mean_wait,
        mean_queue=lam * mean_wait,
        occupancy=served / (c * mu),
    )
