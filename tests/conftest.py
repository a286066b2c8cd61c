"""
Suite-wide settings: a shorter trial timeout, so that a hung test fails in
seconds instead of minutes.
"""
from twisted.trial import util

#: Seconds any one trial test may run (trial's default is 120).
util.DEFAULT_TIMEOUT_DURATION = 30.0
