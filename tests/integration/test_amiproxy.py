"""The soak's AMI proxy: a cut by hand disarms a pending cut_after (no lab needed)."""

from __future__ import annotations

import asyncio

from amiproxy import AmiProxy

MARKER = b"Response: Success\r\nMessage: Originate successfully queued\r\n\r\n"


async def test_a_cut_by_hand_disarms_the_marker_so_a_later_originate_does_not_cut_for_good():
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():  # answers every line with the marker
            writer.write(MARKER)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    proxy = await AmiProxy(target=server.sockets[0].getsockname()[:2]).start()
    try:
        proxy.cut_after(MARKER)  # armed, and no Originate comes: the soak cuts by hand
        proxy.cut()
        proxy.heal()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        for _ in range(2):
            writer.write(b"ping\r\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(len(MARKER)), 5) == MARKER
        assert not proxy.down
        writer.close()
    finally:
        await proxy.close()
        server.close()
