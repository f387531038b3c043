"""What a SIGHUP applies live and what it leaves for a restart; the abuse limits survive a reload."""

from datetime import UTC, datetime, timedelta

from callbackd.config import Config
from callbackd.domain.limits import AbuseGuard, AbuseLimits
from callbackd.reload import plan

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def cfg(**sections) -> Config:
    return Config.model_validate({"node": "n1", "ami": {"secret": "old-secret"}, **sections})


def test_live_keys_are_applied_and_restart_keys_keep_their_running_values():
    running = cfg()
    new = cfg(
        node="n2",
        ami={"secret": "new-secret", "port": 5039},
        schedule={"holidays": ["2026-12-25"], "delays": ["7m"], "max_attempts": 3},
        numbers={"blacklist": ["+12025550123"]},
        dialer={"max_concurrent": 5, "operator_tries": 2, "queues": ["sales"], "whisper_custom": ["beep"]},
        limits={"attempts_per_hour": 10},
        http={"port": 9000},
    )
    p = plan(running, new)
    assert p.changed == [
        "dialer.max_concurrent",
        "dialer.operator_tries",
        "dialer.whisper_custom",
        "limits.attempts_per_hour",
        "numbers.blacklist",
        "schedule.delays",
        "schedule.holidays",
        "schedule.max_attempts",
    ]
    assert p.restart_needed == ["ami.port", "ami.secret", "dialer.queues", "http.port", "node"]
    eff = p.effective
    assert eff.dialer.max_concurrent == 5 and eff.dialer.queues == ["support"]
    assert eff.schedule.delays == [timedelta(minutes=7)] and eff.numbers.blacklist == ["+12025550123"]
    assert eff.ami == running.ami and eff.http == running.http and eff.node == "n1"
    # Until a restart, every reload names the restart-only keys again, and nothing else.
    again = plan(eff, new)
    assert again.changed == [] and again.restart_needed == p.restart_needed


def test_secrets_are_compared_but_never_part_of_what_is_reported():
    p = plan(cfg(), cfg(ami={"secret": "s3cr3t-value"}))
    assert p.restart_needed == ["ami.secret"]
    assert "s3cr3t" not in repr(p.changed) + repr(p.restart_needed)


def test_an_unchanged_file_changes_nothing():
    p = plan(cfg(), cfg())
    assert p.changed == [] and p.restart_needed == []


def test_reconfigured_limits_keep_what_was_counted():
    guard = AbuseGuard(AbuseLimits(attempts_per_hour=3, new_requests_per_number=2))
    for _ in range(3):
        guard.attempt_started(NOW)
    guard.new_request_opened("+12025550123", NOW)
    guard.new_request_opened("+12025550123", NOW)
    assert guard.attempts_left(NOW) == 0
    guard.reconfigure(AbuseLimits(attempts_per_hour=5, new_requests_per_number=3))
    assert guard.attempts_left(NOW) == 2  # the three already started still count
    assert guard.new_request_refusal("+12025550123", NOW) is None
    guard.new_request_opened("+12025550123", NOW)
    assert guard.new_request_refusal("+12025550123", NOW) == "number_rate_limit"
    guard.reconfigure(AbuseLimits(attempts_per_hour=1, new_requests_per_number=3))
    assert guard.attempts_left(NOW) == 0
    guard.reconfigure(AbuseLimits(attempts_per_hour=0))
    assert guard.attempts_left(NOW) is None
