"""A draft-order SFTP client (asyncssh, PyPI) against the gateway
(tests/transfers.rs, issue 19).

asyncssh follows the SFTP draft's SSH_FXP_SYMLINK argument order unless
the server's identification string names OpenSSH; it also sets times with
SETSTAT on a path. Usage: asyncssh_sftp.py PORT USER KEY HOME
"""
import asyncio
import sys

import asyncssh


async def main(port, user, key, home):
    async with asyncssh.connect(
        "127.0.0.1", port=int(port), username=user, client_keys=[key],
        known_hosts=None, agent_path=None, preferred_auth="publickey",
    ) as conn:
        async with conn.start_sftp_client() as sftp:
            print("server:", conn.get_extra_info("server_version"))
            # A link at HOME/link-by-asyncssh pointing to "target-file".
            try:
                await sftp.symlink("target-file", home + "/link-by-asyncssh")
                print("symlink: ok")
            except asyncssh.SFTPError as e:
                print("symlink: failed:", e)
            # Times on a file its owner may write but not read.
            try:
                await sftp.utime(home + "/write-only", (1000000, 2000000))
                print("utime: ok")
            except asyncssh.SFTPError as e:
                print("utime: failed:", e)


asyncio.run(main(*sys.argv[1:]))
