from campaigns.models.devices import *  # noqa
