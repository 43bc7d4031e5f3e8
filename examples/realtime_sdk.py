"""Talk to Moshi with the official openai SDK: stream a WAV in real time, print Moshi's words, save its voice.

python examples/realtime_sdk.py speech.wav moshi.wav [ws://127.0.0.1:8000/v1]
"""

import asyncio
import base64
import sys
import wave

from openai import AsyncOpenAI


async def main(wav_in: str, wav_out: str, url: str) -> None:
    with wave.open(wav_in) as f:  # 24 kHz, mono, 16-bit
        pcm = f.readframes(f.getnframes())
    client = AsyncOpenAI(api_key="unused-unless-configured", websocket_base_url=url)
    async with client.realtime.connect(model="moshi-sft") as conn:

        async def speak() -> None:  # 80 ms per message, at the pace of a microphone
            for start in range(0, len(pcm), 3840):
                chunk = pcm[start : start + 3840]
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
                await asyncio.sleep(0.08)
            await asyncio.sleep(3.0)  # let Moshi finish its sentence, then hang up
            await conn.close()

        speaker = asyncio.create_task(speak())
        heard = bytearray()
        async for event in conn:
            if event.type == "response.output_audio.delta":
                heard += base64.b64decode(event.delta)
            elif event.type == "response.output_audio_transcript.delta":
                print(event.delta, end="", flush=True)
            elif event.type == "error":
                print(f"\nerror: {event.error.code}: {event.error.message}", file=sys.stderr)
        await speaker
    with wave.open(wav_out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(24000)
        f.writeframes(bytes(heard))
    print(f"\nsaved {len(heard) / 48000:.1f} s of Moshi to {wav_out}")


if __name__ == "__main__":
    url = sys.argv[3] if len(sys.argv) > 3 else "ws://127.0.0.1:8000/v1"
    asyncio.run(main(sys.argv[1], sys.argv[2], url))
