"""Takes a lock through /mcp, says so, then waits to be killed (by
test_concurrency.py): a crashed HTTP agent that never says goodbye."""

import sys

import anyio
from mcp import Client


async def main(url: str, key: str) -> None:
    async with Client(url, read_timeout_seconds=30) as client:
        result = await client.call_tool("lock_acquire", {"keys": [key]})
        assert not result.is_error, result.content[0].text
        print(result.structured_content["result"]["fence_token"], flush=True)
        await anyio.sleep(600)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
