"""callbackd: calls back every missed call, operator first."""
