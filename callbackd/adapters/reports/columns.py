"""Column names, units and headers shared by every renderer, in English and Russian.

Machines get stable snake_case names (``car_pct``, ``asa_s``); people get headers in
their language. A figure's unit is decided here once: ratios are fractions in the
domain, percentages in CSV and JSON, percent-formatted fractions in a spreadsheet.
"""

from __future__ import annotations

from typing import Any

from callbackd.domain.metrics import NONE_KEY, Report

LANGUAGES = ("en", "ru")
RATIOS = frozenset({"car", "net_lost_rate", "lcr", "service_level"})
DURATIONS = frozenset(
    {"asa", "ata", "aht", "first_attempt_median", "first_attempt_p90", "reach_median", "reach_p90"}
)


def figure_column(name: str) -> str:
    """The machine name of a figure's column: its unit in the name."""
    if name in RATIOS:
        return f"{name}_pct"
    if name in DURATIONS:
        return f"{name}_s"
    return name


def figure_value(name: str, value: Any) -> Any:
    """A figure as CSV and JSON show it: percentages and seconds, rounded."""
    if value is None:
        return None
    if name in RATIOS:
        return round(value * 100, 2)
    if name in DURATIONS:
        return round(value, 1)
    if name == "attempts_per_reached":
        return round(value, 2)
    return value


def key_name(report: Report) -> str:
    return report.by.value if report.by is not None else "period"


def key_cell(key: str) -> str | None:
    """Rows with no queue, operator or source: an empty cell (null in JSON), not a '-' to neutralise."""
    return None if key == NONE_KEY else key


# (English, Russian) headers of the report's figures, in the units a spreadsheet shows.
FIGURE_HEADERS: dict[str, tuple[str, str]] = {
    "offered": ("Offered", "Поступило"),
    "handled": ("Handled", "Обслужено"),
    "abandoned": ("Abandoned", "Потеряно"),
    "short_abandoned": ("Short abandons", "Короткие сбросы"),
    "car": ("Abandon rate (CAR)", "Доля потерянных (CAR)"),
    "net_lost": ("Net lost", "Потеряно безвозвратно"),
    "net_lost_rate": ("Net lost rate", "Доля безвозвратных потерь"),
    "lcr": ("Lost in queue (LCR)", "Потеряно в очереди (LCR)"),
    "service_level": ("Service level", "Уровень сервиса"),
    "asa": ("Mean wait to answer (ASA), s", "Среднее ожидание ответа (ASA), с"),
    "ata": ("Mean wait to abandon (ATA), s", "Среднее ожидание до сброса (ATA), с"),
    "aht": ("Mean talk time (AHT), s", "Среднее время разговора (AHT), с"),
    "requests": ("Callback requests", "Заявки на перезвон"),
    "attempted": ("Attempted", "С попытками"),
    "reached": ("Reached", "Дозвонились"),
    "recovered": ("Recovered by the client", "Клиент дозвонился сам"),
    "expired": ("Expired", "Истекли"),
    "failed": ("Failed", "Не удались"),
    "cancelled": ("Cancelled", "Отменены"),
    "open": ("Open", "Открыты"),
    "first_attempt_median": ("First attempt, median, s", "Первая попытка, медиана, с"),
    "first_attempt_p90": ("First attempt, p90, s", "Первая попытка, p90, с"),
    "reach_median": ("Reached in, median, s", "Дозвон за, медиана, с"),
    "reach_p90": ("Reached in, p90, s", "Дозвон за, p90, с"),
    "attempts_per_reached": ("Attempts per reached client", "Попыток на дозвон"),
}
KEY_HEADERS: dict[str, tuple[str, str]] = {
    "period": ("Period", "Период"),
    "day": ("Day", "День"),
    "hour": ("Hour", "Час"),
    "queue": ("Queue", "Очередь"),
    "operator": ("Operator", "Оператор"),
    "source": ("Source", "Источник"),
}
TOTAL = ("Total", "Итого")

# Export columns: the same name means the same thing in every table, unless a table says otherwise.
EXPORT_HEADERS: dict[str, tuple[str, str]] = {
    "id": ("ID", "ID"),
    "linkedid": ("Linkedid", "Linkedid"),
    "caller_num": ("Caller ID", "Номер звонящего (CallerID)"),
    "number": ("Number", "Номер"),
    "caller_name": ("Caller name", "Имя звонящего"),
    "did": ("DID", "DID (набранный номер)"),
    "queue": ("Queue", "Очередь"),
    "started_at": ("Started", "Начало"),
    "joined_at": ("Joined queue", "Вход в очередь"),
    "answered_at": ("Answered", "Ответ"),
    "ended_at": ("Ended", "Окончание"),
    "hold_time": ("Wait, s", "Ожидание, с"),
    "agent": ("Operator", "Оператор"),
    "outcome": ("Outcome", "Итог"),
    "miss_reason": ("Why missed", "Причина пропуска"),
    "node": ("Node", "Узел"),
    "pbx": ("PBX", "АТС"),
    "name": ("Name", "Имя"),
    "reason": ("Reason", "Причина"),
    "sources": ("Sources", "Источники"),
    "contact_count": ("Contacts", "Обращений"),
    "status": ("Status", "Статус"),
    "created_at": ("Created", "Создана"),
    "updated_at": ("Updated", "Изменена"),
    "due_at": ("Due", "Следующая попытка"),
    "preferred_at": ("Preferred time", "Удобное время"),
    "attempts_made": ("Attempts", "Попыток"),
    "operator_tries": ("Operator tries", "Попыток оператору"),
    "last_attempt_at": ("Last attempt", "Последняя попытка"),
    "closed_at": ("Closed", "Закрыта"),
    "close_reason": ("Close reason", "Причина закрытия"),
    "note": ("Note", "Заметка"),
    "disposition": ("Disposition", "Результат"),
    "client_zones": ("Client time zones", "Часовые пояса клиента"),
    "wait_reason": ("Waits for", "Чего ждёт"),
    "time_chosen": ("Time chosen by client", "Время выбрано клиентом"),
    "claimed_by": ("Claimed by", "Взята узлом"),
    "claim_expires": ("Claim expires", "Захват до"),
    "claim_token": ("Claim token", "Метка захвата"),
    "age_from": ("Age counted from", "Возраст считается от"),
    "lease_until": ("Followed until", "Аренда до"),
    "request_id": ("Request", "Заявка"),
    "try_no": ("Try", "Попытка №"),
    "operator": ("Operator", "Оператор"),
    "channel_id": ("Channel ID", "ID канала"),
    "counted": ("Counted", "Засчитана"),
    "originate_reason": ("Originate result", "Результат Originate"),
    "dial_status": ("Dial status", "DIALSTATUS"),
    "hangup_cause": ("Hang-up cause", "Причина разъединения"),
    "operator_answered_at": ("Operator answered", "Ответ оператора"),
    "client_answered_at": ("Client answered", "Ответ клиента"),
    "talk_seconds": ("Talk, s", "Разговор, с"),
}
_TABLE_HEADERS: dict[tuple[str, str], tuple[str, str]] = {
    ("calls", "id"): ("Call ID", "ID звонка"),
    ("requests", "id"): ("Request", "Заявка"),
    ("attempts", "id"): ("Attempt ID", "ID попытки"),
    ("attempts", "number"): ("Number called", "Набранный номер"),
}


def _pick(pair: tuple[str, str], language: str) -> str:
    return pair[LANGUAGES.index(language)]


def export_header(what: str, column: str, language: str) -> str:
    return _pick(_TABLE_HEADERS.get((what, column)) or EXPORT_HEADERS[column], language)


def figure_header(name: str, language: str) -> str:
    return _pick(FIGURE_HEADERS[name], language)


def key_header(report: Report, language: str) -> str:
    return _pick(KEY_HEADERS[key_name(report)], language)


def total_label(language: str) -> str:
    return _pick(TOTAL, language)
