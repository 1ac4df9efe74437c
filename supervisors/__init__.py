"""Generic OTP supervision trees on Pykka."""
