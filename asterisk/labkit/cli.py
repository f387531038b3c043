"""callbackd lab: a real Asterisk 22 with scripted SIP phones for integration tests.

Asterisk runs from a cached Debian sid chroot (built with debootstrap on first use),
operators are SIPp user agents, the PSTN is a small stateful SIP responder built into
this script, and outside callers are SIPp user agents started per call.

    asterisk/lab up [--restart] [--op1 B] [--op2 B] [--operators N]   start everything (idempotent)
    asterisk/lab status [--json]                      what is running
    asterisk/lab operator op1 answer|busy|noanswer|reject|off|answer:SECONDS
    asterisk/lab pstn NUMBER busy,answer              script the next calls to a client
    asterisk/lab pstn --reset | --talk S | --ring S | --show | --log
    asterisk/lab call --from NUMBER [--to EXT] [--hangup-after S] [--name N] [--dtmf K] [--background]
    asterisk/lab reload                               copy configs and dialplans again, core reload
    asterisk/lab trace FILE [--seconds S] [--user lab|callbackd]
    asterisk/lab cli 'core show channels'
    asterisk/lab down                                 stop everything, verify nothing is left

See asterisk/README.md. Needs root (debootstrap, chroot). Python standard library only.
"""

from __future__ import annotations

import argparse

from labkit.chroot import profiles
from labkit.commands import cmd_build, cmd_call, cmd_cli, cmd_operator, cmd_pstn, cmd_reload, cmd_trace
from labkit.layout import CALL_SAFETY_CAP, DEFAULT_PROFILE, OPERATORS, PSTN_PORT, LabError, warn
from labkit.lifecycle import cmd_down, cmd_status, cmd_up
from labkit.pstn import cmd_pstn_serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="asterisk/lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(
        dest="cmd",
        required=True,
        metavar="COMMAND",
        title="commands (asterisk/lab COMMAND --help for details)",
    )

    up = sub.add_parser("up", help="start the lab (builds the chroot on first use)")
    up.add_argument("--restart", action="store_true", help="stop a running lab and start it again")
    up.add_argument("--rebuild", action="store_true", help="rebuild the cached chroot")
    up.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=profiles(),
        help="dialplan and queue shape: default (hand-written) or freepbx (FreePBX-generated shape);"
        " switching a running lab reloads Asterisk without a restart",
    )
    for name in OPERATORS:
        up.add_argument(f"--{name}", metavar="BEHAVIOUR", help=f"{name}'s behaviour (default answer)")
    up.add_argument(
        "--operators",
        type=int,
        default=2,
        metavar="N",
        help="operators in the support queue (default 2): op3..opN answer at one SIPp (scale benchmarks);"
        " a running lab with another count is restarted",
    )
    up.set_defaults(fn=cmd_up)

    sub.add_parser("down", help="stop everything the lab started").set_defaults(fn=cmd_down)

    st = sub.add_parser("status", help="show what is running")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)

    op = sub.add_parser("operator", help="set an operator phone's behaviour")
    op.add_argument("name", help="op1, op2, op1,op2 or all")
    op.add_argument("behaviour", nargs="?", help="answer | answer:SECONDS | busy | noanswer | reject | off")
    op.add_argument(
        "--restart", action="store_true", help="restart the phone even if the behaviour is the same"
    )
    op.set_defaults(fn=cmd_operator)

    ps = sub.add_parser("pstn", help="script the PSTN clients")
    ps.add_argument("number", nargs="?")
    ps.add_argument("script", nargs="?", help="comma list, e.g. busy,answer ('default' removes the script)")
    ps.add_argument("--reset", action="store_true", help="remove all scripts and call counters")
    ps.add_argument(
        "--talk", type=float, help="seconds an answering client stays before it hangs up (0 = never)"
    )
    ps.add_argument("--ring", type=float, help="seconds an answering client rings before it answers")
    ps.add_argument("--show", action="store_true", help="print the settings and scripts")
    ps.add_argument("--log", action="store_true", help="print the log of calls the PSTN received")
    ps.set_defaults(fn=cmd_pstn)

    ca = sub.add_parser("call", help="place an inbound call from an outside number")
    ca.add_argument("--from", dest="from_", required=True, metavar="NUMBER")
    ca.add_argument(
        "--to",
        default="100",
        metavar="EXT",
        help="100 support queue (default), 101 sales queue, 102 op1 only, 103 FastAGI then support,"
        " 104 after-hours menu",
    )
    ca.add_argument(
        "--hangup-after",
        type=float,
        metavar="SECONDS",
        help=f"caller hangs up after this long (0/absent: stays, at most {CALL_SAFETY_CAP} s)",
    )
    ca.add_argument("--name", default="Caller", help="caller display name")
    ca.add_argument("--dtmf", metavar="KEY", help="press this key (SIP INFO) once the call is answered")
    ca.add_argument(
        "--dtmf-after",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="when to press --dtmf, counted from the answer (default 2)",
    )
    ca.add_argument(
        "--keys",
        metavar="KEYS@S,...",
        help="press several keys at set times after the answer, e.g. 1@2,2@8,1430@11,1@18"
        " (keys of one group 0.3 s apart); excludes --dtmf",
    )
    ca.add_argument("--background", action="store_true", help="return at once, print the sipp pid")
    ca.set_defaults(fn=cmd_call)

    tr = sub.add_parser("trace", help="record raw AMI traffic to a file")
    tr.add_argument("file")
    tr.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)")
    tr.add_argument(
        "--user",
        choices=("lab", "callbackd"),
        default="callbackd",
        help="which AMI account to record as (default callbackd: what the product sees)",
    )
    tr.set_defaults(fn=cmd_trace)

    sub.add_parser("reload", help="copy the configs and dialplans again and reload Asterisk").set_defaults(
        fn=cmd_reload
    )

    cl = sub.add_parser("cli", help="run an Asterisk CLI command")
    cl.add_argument("command", nargs="+")
    cl.set_defaults(fn=cmd_cli)

    bd = sub.add_parser("build", help="only build (or check) the cached chroot")
    bd.add_argument("--rebuild", action="store_true")
    bd.set_defaults(fn=cmd_build)

    srv = sub.add_parser("_pstn-serve")  # internal: run by "up", not listed
    srv.add_argument("--port", type=int, default=PSTN_PORT)
    srv.set_defaults(fn=cmd_pstn_serve)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except LabError as e:
        warn(f"error: {e}")
        return e.code
    except KeyboardInterrupt:
        warn("interrupted")
        return 130
    except OSError as e:
        warn(f"error: {e}")
        return 1
