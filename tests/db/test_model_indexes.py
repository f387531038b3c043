"""The models' partial index (its WHERE added by models.with_index_predicates, as Alembic's env.py
does) matches what the migrations create, on both databases."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.schema import CreateIndex

from callbackd.adapters import db, models


def _model_ddl(dialect) -> str:
    models.with_index_predicates()
    (index,) = [i for i in models.Request.__table__.indexes if i.name == "uq_requests_open_number"]
    return " ".join(str(CreateIndex(index).compile(dialect=dialect)).split())


async def test_the_open_number_index_is_partial_in_the_models_and_the_database(db_url):
    engine = db.make_engine(db_url)
    try:
        await db.upgrade(engine)
        async with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                found = await conn.scalar(
                    text("SELECT sql FROM sqlite_master WHERE name = 'uq_requests_open_number'")
                )
            else:
                found = await conn.scalar(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_requests_open_number'")
                )
        model = _model_ddl(engine.dialect)
    finally:
        await engine.dispose()
    assert model.endswith(f"WHERE {models.OPEN_SQL}"), model
    if engine.dialect.name == "sqlite":
        assert " ".join(found.split()) == model
    else:
        assert found.startswith("CREATE UNIQUE INDEX") and " WHERE " in found, found
