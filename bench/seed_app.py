"""The approach of the service SMSBulkApp replaces (seed 000), rebuilt for side-by-side benchmarks.

Not used by SMSBulkApp. It keeps the seed's costs: a new HTTP connection for every call
(module-level `requests.post/get`), the token file read on every webhook, success taken
from HTTP 200, and gunicorn's sync workers. Run: gunicorn -w 2 bench.seed_app:app
"""
import json
import os
from datetime import UTC, datetime

import requests
from flask import Flask, jsonify, request

app = Flask(__name__)

API_KEY = os.environ.get("API_KEY", "")
MOYKLASS_API_URL = os.environ.get("MOYKLASS_API_URL", "")
SMS_API_URL = os.environ.get("SMS_API_URL", "")
TOKEN_FILE_PATH = os.environ.get("TOKEN_FILE_PATH", "token.json")
SMS_HEADERS = {"Content-type": "application/json; charset=utf-8",
               "username": os.environ.get("SMS_USERNAME", ""), "pwd": os.environ.get("SMS_PASSWORD", "")}


def get_token() -> str:
    try:
        with open(TOKEN_FILE_PATH) as handle:
            saved = json.load(handle)
        if datetime.fromisoformat(saved["expiresAt"]) > datetime.now(UTC):
            return saved["accessToken"]
    except (OSError, ValueError, KeyError):
        pass
    answer = requests.post(f"{MOYKLASS_API_URL}/company/auth/getToken", json={"apiKey": API_KEY}).json()
    with open(TOKEN_FILE_PATH, "w") as handle:
        json.dump(answer, handle)
    return answer["accessToken"]


@app.route("/webhook", methods=["POST"])
def webhook():
    user_id = request.json["object"]["userId"]
    user = requests.get(f"{MOYKLASS_API_URL}/company/users/{user_id}",
                        headers={"x-access-token": get_token()}, timeout=10).json()
    answer = requests.post(SMS_API_URL, headers=SMS_HEADERS,
                           json={"sender": "SmartLab", "message": "Ostala su Vam još dva časa.",
                                 "phone": user["phone"]})
    if answer.status_code == 200:
        return jsonify({"status": "success"})
    return jsonify({"status": "error"}), 500
