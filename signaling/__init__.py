"""Sessions and transports: incremental text in, paced audio out, over WebRTC, WebSocket and telephony."""
