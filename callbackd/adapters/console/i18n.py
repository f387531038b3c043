"""The console's words in English and Russian (a missing key shows as the key)."""

from __future__ import annotations

LANGUAGES = ("en", "ru")

TEXT: dict[str, tuple[str, str]] = {
    "title": ("callbackd console", "Консоль callbackd"),
    "sign_in": ("Sign in", "Войти"),
    "sign_out": ("Sign out", "Выйти"),
    "account": ("Account", "Учётная запись"),
    "password": ("Password", "Пароль"),
    "wrong": ("Wrong account or password", "Неверная учётная запись или пароль"),
    "blocked": (
        "Too many attempts; try again in a few minutes",
        "Слишком много попыток; повторите через несколько минут",
    ),
    "live": ("Live", "Сейчас"),
    "figures": ("Figures", "Показатели"),
    "operators": ("Operators", "Операторы"),
    "waiting": ("Callers waiting", "Ждут в очереди"),
    "in_flight": ("Calls in flight", "Идут звонки"),
    "open_requests": ("Open requests", "Открытые заявки"),
    "request": ("Request", "Заявка"),
    "number": ("Number", "Номер"),
    "status": ("Status", "Статус"),
    "due": ("Next due", "Следующая попытка"),
    "why": ("Why", "Почему"),
    "attempts": ("Attempts", "Попытки"),
    "stage": ("Stage", "Этап"),
    "queue": ("Queue", "Очередь"),
    "operator": ("Operator", "Оператор"),
    "none": ("none", "нет"),
    "ami_down": ("AMI disconnected", "AMI не подключён"),
    "why_dialling": ("dialling now", "идёт звонок"),
    "why_operator": ("waiting for a free operator", "ждёт свободного оператора"),
    "why_hours": ("outside business hours", "вне рабочего времени"),
    "why_ladder": ("retry ladder", "лестница повторов"),
    "why_chosen": ("at the chosen time", "в выбранное время"),
    "op_free": ("free", "свободен"),
    "op_busy": ("busy", "занят"),
    "op_paused": ("paused", "на паузе"),
    "op_offline": ("offline", "не в сети"),
    "stage_operator": ("ringing the operator", "звоним оператору"),
    "stage_client": ("ringing the client", "звоним клиенту"),
    "stage_talking": ("talking", "разговор"),
    "today": ("Today", "Сегодня"),
    "from": ("From", "С"),
    "to": ("To", "По"),
    "by": ("By", "По"),
    "show": ("Show", "Показать"),
    "offered": ("Offered", "Поступило"),
    "handled": ("Handled", "Обслужено"),
    "abandoned": ("Abandoned", "Потеряно"),
    "car": ("Abandon rate (CAR)", "Доля потерянных (CAR)"),
    "lcr": ("Lost in queue (LCR)", "Потеряно в очереди (LCR)"),
    "net_lost_rate": ("Net lost rate", "Доля безвозвратных потерь"),
    "recovered_callback": ("Recovered by callback", "Возвращено перезвоном"),
    "recovered_client": ("Recovered by the client", "Клиент дозвонился сам"),
    "first_attempt": ("Miss to first attempt, median", "От пропуска до первой попытки, медиана"),
    "car_vs_net": ("CAR and net lost rate", "CAR и безвозвратные потери"),
    "reach_by_try": ("Reached on attempt number", "Дозвон с попытки №"),
    "ours": ("here", "у нас"),
    "field": ("field figures", "отраслевые данные"),
    "per_queue": ("Per queue", "По очередям"),
    "per_operator": ("Per operator", "По операторам"),
    "timeline": ("Timeline", "Хронология"),
    "actions": ("Actions", "Действия"),
    "cancel": ("Cancel", "Отменить"),
    "retry": ("Call now", "Позвонить сейчас"),
    "schedule": ("Call at", "Позвонить в"),
    "note": ("Note", "Заметка"),
    "add_note": ("Add note", "Добавить заметку"),
    "disposition": ("Disposition", "Результат"),
    "save": ("Save", "Сохранить"),
    "add": ("Add a request", "Добавить заявку"),
    "name": ("Name", "Имя"),
    "contact": ("contact", "обращение"),
    "attempt": ("attempt", "попытка"),
    "audit": ("by", "кто"),
    "done": ("Done", "Готово"),
    "refused": ("Not possible", "Невозможно"),
    "language": ("Русский", "English"),
    "role_forbidden": ("Your role may not do this", "Вашей роли это не разрешено"),
}
DISPOSITIONS: dict[str, tuple[str, str]] = {
    "sale": ("sale", "продажа"),
    "question": ("question answered", "вопрос решён"),
    "no_interest": ("not interested", "не интересно"),
    "wrong_number": ("wrong number", "ошибочный номер"),
    "call_later": ("asked to call later", "просил перезвонить позже"),
}


def translator(language: str):
    i = LANGUAGES.index(language) if language in LANGUAGES else 0

    def t(key: str) -> str:
        pair = TEXT.get(key) or DISPOSITIONS.get(key)
        return pair[i] if pair else key

    return t
