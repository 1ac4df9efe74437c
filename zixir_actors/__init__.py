"""zixir-actors: OTP-style supervised services for Python AI automation."""
