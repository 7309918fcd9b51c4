"""What a device lets leave it for the cloud: the records its user's consent policy allows.

Apart from personalize.py because the DP methods need the same set (``dp.selection = private``
spends ε on the records that were *not* shared), and they sit below personalize.
"""

from __future__ import annotations

from collections.abc import Mapping

from cdcda_fl.config import Scalar
from cdcda_fl.data.lamp import User
from cdcda_fl.data.tasks import get_task
from cdcda_fl.privacy.consent import ConsentPolicy, SharedRecords


def share_records(user: User, cfg: Mapping[str, Scalar], *, id_key: bytes | None = None) -> SharedRecords:
    """The records (scrubbed, allowed fields only) this user's consent policy lets leave the device.

    ``cfg`` is the policy here (library use: experiments, audits); a device node applies its
    owner's file and the server's ceiling instead (``device_node.share``)."""
    return ConsentPolicy.from_config(cfg, user.user_id).apply(get_task(user.task), user.user_id, user.profile,
                                                              id_key=id_key)
