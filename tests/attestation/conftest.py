"""Real TEE evidence from ../shared/testvectors/attestation (read in place; see its README for provenance).

Verification times are fixed inside each sample's validity window, because several leaf certificates, CRLs
and collateral sets have expired since capture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from caltrain.attestation.evidence import Evidence
from caltrain.attestation.policy import Policy, TdxPolicy

VECTORS = Path(
    os.environ.get(
        "CALTRAIN_TESTVECTORS",
        Path(__file__).resolve().parents[2] / ".." / "shared" / "testvectors" / "attestation",
    )
)


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def vector(rel: str) -> bytes:
    path = VECTORS / rel
    if not path.exists():
        pytest.skip(f"attestation test vectors not found at {VECTORS} (set CALTRAIN_TESTVECTORS); CI always has them")
    return path.read_bytes()


@dataclass(frozen=True)
class Sample:
    """One real piece of evidence, the time to verify it at, and the policy that exactly matches it."""

    name: str
    platform: str
    quote: str
    when: str
    supporting: dict[str, str] = field(default_factory=dict)
    measurement: str = ""
    section: dict[str, object] = field(default_factory=dict)
    debug: bool = False

    def evidence(self, *, nonce: bytes = b"\0" * 32, key: bytes = b"k" * 32) -> Evidence:
        return Evidence(
            self.platform,
            vector(self.quote),
            key,
            nonce,
            {name: vector(rel) for name, rel in self.supporting.items()},
        )

    def document(self, **section_changes: object) -> dict[str, object]:
        """The policy as its JSON file would hold it, with some fields of the platform section changed."""
        return {
            "platforms": [self.platform],
            "measurements": [self.measurement],
            "allow_debug": self.debug,
            self.platform: {**self.section, **section_changes},
        }

    def policy(self, **section_changes: object) -> Policy:
        return Policy.from_dict(self.document(**section_changes))

    @property
    def now(self) -> datetime:
        return at(self.when)


SGX_WINDOW = "2025-07-01T00:00:00Z"  # inside 2025-06-19T10:56:11Z .. 2025-07-19T10:01:18Z (README)
TDX_WINDOW = "2025-07-01T00:00:00Z"  # inside 2025-06-19T10:32:27Z .. 2025-07-19T10:00:35Z
TDX5_WINDOW = "2026-03-01T00:00:00Z"  # inside 2026-02-18T10:58:51Z .. 2026-03-20T10:41:15Z
ZERO48 = "00" * 48
ZERO32 = "00" * 32
# A TDX section that accepts any workload, written out as a policy must: for tests about something else.
TDX_ANY_WORKLOAD: dict[str, object] = dict(TdxPolicy.explicit)

SAMPLES = [
    Sample(
        "sgx-dcapqvl+collateral", "sgx-dcap", "sgx/dcapqvl_sgx_quote_v3.bin", SGX_WINDOW,
        {"collateral": "sgx/dcapqvl_sgx_quote_v3_collateral.json"},
        measurement="33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb",
        section={
            "mrsigners": ["815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"],
            "isv_prod_id": 0, "min_isv_svn": 0,
            "accepted_tcb_statuses": ["UpToDate", "ConfigurationAndSWHardeningNeeded"],
        },
    ),
    Sample(
        "sgx-occlum", "sgx-dcap", "sgx/trustee_occlum_sgx_quote_v3.bin", SGX_WINDOW,
        measurement="8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68",
        section={
            "mrsigners": ["83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"],
            "isv_prod_id": 0, "require_collateral": False,
        },
        debug=True,
    ),
    Sample(
        "sgx-mobilecoin", "sgx-dcap", "sgx/mobilecoin_hw_sgx_quote_v3.bin", SGX_WINDOW,
        measurement="1dd0df84810e53e26b2b167dfe0f97cc4364085fe0bd41d5e18a759c21d5c189",
        section={"mrsigners": ["d412a4f07ef83892a5915fb2ab584be31e186e5a4f95ab5f6950fd4eb8694d7b"],
                 "require_collateral": False},
        debug=True,
    ),
    Sample(
        "tdx-dcapqvl+collateral", "tdx", "tdx/dcapqvl_tdx_quote_v4.bin", TDX_WINDOW,
        {"collateral": "tdx/dcapqvl_tdx_quote_v4_collateral.json"},
        measurement="91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7",
        section={
            "rtmrs": {
                0: "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0",
                1: "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378",
                2: "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132",
                3: ZERO48,
            },
            "mr_config_id": ZERO48, "mr_owner": ZERO48, "mr_owner_config": ZERO48,
            "mr_seams": [(
                "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab5"
                "8c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1"
            )],
            "min_tee_tcb_svn": "06010300000000000000000000000000",
        },
    ),
    Sample(
        "tdx-trustee", "tdx", "tdx/trustee_tdx_quote_v4.bin", TDX_WINDOW,
        measurement="705ee9381b8633a9fbe532b52345e8433343d2868959f57889d84ca377c395b689cac1599ccea1b7d420483a9ce5f031",
        section={
            "rtmrs": {
                0: "e940da7c2712d2790e2961e00484f4fa8e6f9eed71361655ae22699476b14f9e63867eb41edd4b480fef0c59f496b288",
                1: "559cfcf42716ed6c40a48a73d5acb7da255435012f0a9f00fbe8c1c57612ede486a5684c4c9ff3ddf52315fcdca3a596",
                2: ZERO48, 3: ZERO48,
            },
            "mr_seams": [(
                "2fd279c16164a93dd5bf373d834328d46008c2b693af9ebb"
                "865b08b2ced320c9a89b4869a9fab60fbe9d0c5a5363c656"
            )],
            "mr_config_id": ZERO48, "mr_owner": ZERO48, "mr_owner_config": ZERO48,
            "require_collateral": False,
        },
        debug=True,
    ),
    Sample(
        "tdx-v5-gotdx", "tdx", "tdx/gotdx_quote_v5_sample.bin", "2026-02-03T01:00:00Z",
        measurement="7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876",
        section={
            "require_collateral": False, "min_tee_tcb_svn": "0b010400000000000000000000000000",
            "rtmrs": {
                0: "5c8daf76063a71ac8fcef4067564661fc682ed7944c7a5d21dbbced02f61ceff4ba0678c6aef3bdae8cbc614cec24619",
                1: "463acaace1b6e97c76e92e41fe312aa66f3fd4dad60ec7acf169859db0343e3d1e591646795cdc80fbc0ca5f7041d253",
                2: "6369b9c9a3b791ebcbdc5a0bb9536cfb57f50df2b393b33c8b29616d3568baa61f4b59dc6092e31ea8764bcbdfc69f20",
                3: ZERO48,
            },
            "mr_seams": [(
                "7bf063280e94fb051f5dd7b1fc59ce9aac42bb961df8d44b"
                "709c9b0ff87a7b4df648657ba6d1189589feab1d5a3c9a9d"
            )],
            "mr_config_id": ZERO48, "mr_owner": ZERO48, "mr_owner_config": ZERO48,
        },
    ),
    Sample(
        "snp-gosev-milan", "sev-snp", "sev-snp/gosev_attestation_report_v2_milan.bin", "2025-01-01T00:00:00Z",
        {"vcek": "sev-snp/gosev_vcek_milan.der"},
        measurement="b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
        section={
            "require_collateral": False, "host_data": ZERO32,
            "min_tcb": {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68},
            "chip_ids": [(
                "3ac3fe21e13fb0990eb28a802e3fb6a29483a6b0753590c951bdd3b8e5378618"
                "4ca39e359669a2b76a1936776b564ea464cdce40c05f63c9b610c5068b006b5d"
            )],
        },
        debug=True,
    ),
    Sample(
        "snp-virtee-milan", "sev-snp", "sev-snp/virtee_report_v2_milan.bin", "2025-01-01T00:00:00Z",
        {"vcek": "sev-snp/virtee_vcek_milan.der"},
        measurement="7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
        section={"require_collateral": False, "host_data": ZERO32,
                 "min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}},
    ),
    Sample(
        "snp-trustee-idblock", "sev-snp", "sev-snp/trustee_report_v2_milan.bin", "2025-01-01T00:00:00Z",
        {"vcek": "sev-snp/trustee_vcek_milan.der"},
        measurement="a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
        section={
            "require_collateral": False, "min_guest_svn": 4, "host_data": ZERO32,
            "id_key_digests": [(
                "0356215882a825279a85b300b0b742931d113bf7e32dde2e"
                "50ffde7ec743ca491ecdd7f336dc28a6e0b2bb57af7a44a3"
            )],
        },
    ),
    Sample(
        "snp-aws-vlek", "sev-snp", "sev-snp/trustee_vlek_report_v3_milan_aws.bin", "2025-07-01T00:00:00Z",
        {"vcek": "sev-snp/trustee_vlek_milan_aws.der"},
        measurement="8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0",
        section={"require_collateral": False, "host_data": ZERO32, "vmpls": [1],
                 "min_tcb": {"bootloader": 4, "snp": 24, "microcode": 217}},
    ),
    Sample(
        "snp-azure-genoa", "sev-snp", "sev-snp/trustee_azure_report_v3_genoa.bin", "2025-07-01T00:00:00Z",
        {"vcek": "sev-snp/trustee_vcek_genoa.pem"},
        measurement="f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae",
        section={
            "require_collateral": False, "host_data": ZERO32,
            "min_tcb": {"bootloader": 10, "snp": 23, "microcode": 84},
            "min_guest_svn": 65547,
            "id_key_digests": [(
                "942fd93ebde6ea7a96efadeafc60f1c6b3d10e703b1dafd7"
                "555b92f7f3d32d0e006767648cba5b102af3d65756af4177"
            )],
        },
    ),
]  # fmt: skip

BY_NAME = {s.name: s for s in SAMPLES}
