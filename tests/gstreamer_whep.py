"""A GStreamer ``webrtcbin`` WHEP player: a WebRTC peer that is not aiortc (libnice ICE, OpenSSL DTLS with an RSA key).

Run by the system Python with PyGObject (Debian's python3-gi), not the project's
venv, so it imports nothing from the project::

    /usr/bin/python3 tests/gstreamer_whep.py "http://127.0.0.1:8000/v1/whep?text=Hello" --seconds 6 --out heard.f32

It POSTs a receive-only offer, decodes the answer's Opus track (48 kHz mono float32
samples to ``--out``), DELETEs the resource and prints one JSON line: the HTTP statuses,
the connection and DTLS states it reached, and how many samples it decoded.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

OPUS_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,clock-rate=48000,payload=111"
DECODE = (
    "rtpopusdepay ! opusdec ! audioconvert ! audio/x-raw,format=F32LE,channels=1"
    " ! appsink name=sink emit-signals=true sync=false"
)


class Player:
    """One WHEP call: offer, answer, play for ``seconds``, DELETE."""

    def __init__(self, url: str, seconds: float, out: str) -> None:
        self.url = url
        self.seconds = seconds
        self.out = open(out, "wb")  # noqa: SIM115 (closed at the end of run)
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.Pipeline.new("whep")
        self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.pipeline.add(self.webrtc)
        self._loopback_only()
        self.result = {"status": None, "location": None, "connection": "new", "dtls": "new", "samples": 0}
        self.error: str | None = None
        self.webrtc.emit(
            "add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, Gst.Caps.from_string(OPUS_CAPS)
        )
        self.webrtc.connect("pad-added", self._on_pad)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::connection-state", self._on_connection)
        self.pipeline.get_bus().add_signal_watch()
        self.pipeline.get_bus().connect("message::error", self._on_error)

    def _loopback_only(self) -> None:
        """Gather only 127.0.0.1 over UDP: libnice skips loopback unless told (tests stay on loopback)."""
        # held for the player's life: PyGObject drops a reference it never took when this wrapper dies
        self._ice = ice = self.webrtc.get_property("ice-agent")
        ice.set_property("ice-tcp", False)
        address = Nice.Address()
        address.set_from_string("127.0.0.1")
        ice.get_property("agent").add_local_address(address)

    def run(self) -> dict:
        self.pipeline.set_state(Gst.State.PLAYING)
        promise = Gst.Promise.new()
        self.webrtc.emit("create-offer", None, promise)
        promise.wait()
        reply = promise.get_reply()  # held: the offer lives in the reply
        self.webrtc.emit("set-local-description", reply.get_value("offer"), Gst.Promise.new())
        GLib.timeout_add(int(self.seconds * 1000), self.loop.quit)
        self.loop.run()
        self._record_dtls()
        if self.result["location"]:
            self.result["delete_status"] = self._http("DELETE", urllib.parse.urljoin(self.url, self.result["location"]))[0]
        self.pipeline.set_state(Gst.State.NULL)
        self.out.close()
        if self.error:
            self.result["error"] = self.error
        return self.result

    def _on_gathering(self, *_args: object) -> None:
        if self.webrtc.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            return
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        status, headers, body = self._http("POST", self.url, offer.encode(), {"Content-Type": "application/sdp"})
        self.result["status"] = status
        self.result["location"] = headers.get("Location")
        if status != 201:
            self.error = body.decode(errors="replace")
            self.loop.quit()
            return
        _, message = GstSdp.SDPMessage.new_from_text(body.decode())
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())

    def _on_connection(self, *_args: object) -> None:
        state = self.webrtc.get_property("connection-state")
        self.result["connection"] = state.value_nick
        self._record_dtls()

    def _record_dtls(self) -> None:
        """The DTLS state of the (bundled) transport: ``connected`` once the handshake succeeded."""
        transport = self.webrtc.emit("get-transceiver", 0).get_property("receiver").get_property("transport")
        self.result["dtls"] = transport.get_property("state").value_nick if transport is not None else "none"

    def _on_pad(self, _webrtc: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        chain = Gst.parse_bin_from_description(DECODE, True)
        self.pipeline.add(chain)
        chain.sync_state_with_parent()
        pad.link(chain.get_static_pad("sink"))
        chain.get_by_name("sink").connect("new-sample", self._on_sample)

    def _on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        buffer = sink.emit("pull-sample").get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        if ok:
            self.out.write(info.data)
            self.result["samples"] += info.size // 4
            buffer.unmap(info)
        return Gst.FlowReturn.OK

    def _on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        self.error = f"{error.message} ({debug})"

    @staticmethod
    def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, object, bytes]:
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="the WHEP endpoint, with any query (voice, text)")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long to play before the DELETE")
    parser.add_argument("--out", required=True, help="where the decoded audio goes (raw float32, 48 kHz mono)")
    args = parser.parse_args()
    Gst.init(None)
    print(json.dumps(Player(args.url, args.seconds, args.out).run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
