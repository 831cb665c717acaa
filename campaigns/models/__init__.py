from campaigns.models.campaigns import *  # noqa: F403
from campaigns.models.devices import *  # noqa: F403
from campaigns.models.fleet import *  # noqa: F403
