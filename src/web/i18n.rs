//! Japanese and English UI text.
//!
//! One table, English and Japanese side by side, so a missing translation
//! is visible in review (and a test checks none is empty). The language comes
//! from the `bw_lang` cookie (the switch in the header), else from
//! `Accept-Language`, else from `[web] default_language`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ja,
}

pub const LANG_COOKIE: &str = "bw_lang";

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }

    pub fn from_code(code: &str) -> Option<Lang> {
        match code.trim().to_ascii_lowercase().as_str() {
            "en" => Some(Lang::En),
            "ja" => Some(Lang::Ja),
            _ => None,
        }
    }

    /// The first of ja/en in the header, honouring q-values.
    pub fn from_accept_language(header: &str) -> Option<Lang> {
        let mut best: Option<(f32, Lang)> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim();
            let primary = tag.split('-').next().unwrap_or("");
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            if let Some(lang) = Lang::from_code(primary) {
                if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, lang));
                }
            }
        }
        best.map(|(_, lang)| lang)
    }

    pub fn t(self, key: &str) -> &'static str {
        match TEXT.iter().find(|(k, _, _)| *k == key) {
            Some((_, en, ja)) => match self {
                Lang::En => en,
                Lang::Ja => ja,
            },
            None => {
                debug_assert!(false, "missing UI text {key:?}");
                "?"
            }
        }
    }
}

/// (key, English, Japanese). `{}` marks where a value is put in.
const TEXT: &[(&str, &str, &str)] = &[
    ("app", "Breakwater mail continuity", "Breakwater メール継続サービス"),
    ("login.title", "Sign in", "サインイン"),
    ("login.address", "Mail address", "メールアドレス"),
    ("login.password", "Password", "パスワード"),
    ("login.submit", "Sign in", "サインイン"),
    ("login.failed", "The address or password is not right.", "メールアドレスまたはパスワードが正しくありません。"),
    ("login.locked", "Too many failed sign-ins for this account. Try again in {} minutes, or ask your IT team.", "このアカウントはサインインの失敗が多すぎるため一時的にロックされています。{} 分後に再試行するか、IT 部門にお問い合わせください。"),
    ("login.ip_blocked", "Too many failed sign-ins from your network. Try again in {} minutes.", "お使いのネットワークからのサインイン失敗が多すぎます。{} 分後に再試行してください。"),
    ("login.expired", "The sign-in form expired. Please try again.", "サインインフォームの有効期限が切れました。もう一度お試しください。"),
    ("totp.recovery_hint", "Lost your phone? Enter one of your recovery codes instead.", "スマートフォンをなくした場合は、代わりにリカバリーコードを 1 つ入力してください。"),
    ("enrol.title", "Set up your authenticator", "認証アプリの設定"),
    ("enrol.required", "Your account needs a one-time code at every sign-in. Set up an authenticator app now; it takes a minute.", "このアカウントはサインインのたびにワンタイムコードが必要です。今すぐ認証アプリを設定してください (1 分ほどで終わります)。"),
    ("enrol.scan", "Scan this QR code with an authenticator app (Microsoft Authenticator, Google Authenticator, 1Password…), or enter the key by hand. Then type the 6-digit code it shows.", "認証アプリ (Microsoft Authenticator、Google 認証システム、1Password など) でこの QR コードを読み取るか、キーを手入力してください。表示された 6 桁のコードを入力します。"),
    ("enrol.open_app", "Open in the authenticator app on this device", "この端末の認証アプリで開く"),
    ("enrol.key", "Key", "キー"),
    ("enrol.failed", "That code does not match. Check the time on your phone and try the current code.", "コードが一致しません。スマートフォンの時刻を確認し、現在のコードを入力してください。"),
    ("enrol.taken", "An authenticator was set up for this account elsewhere in the meantime. Sign in again.", "この間に別の場所でこのアカウントの認証アプリが設定されました。もう一度サインインしてください。"),
    ("recovery.title", "Your recovery codes", "リカバリーコード"),
    ("recovery.explain", "If you lose your authenticator, each of these codes signs you in once. Print them or keep them in a password manager. They are shown only now; the old ones no longer work.", "認証アプリを使えなくなったとき、これらのコードで 1 回ずつサインインできます。印刷するかパスワードマネージャーに保存してください。表示されるのは今回だけです。以前のコードは無効になりました。"),
    ("recovery.continue", "I have saved them — continue", "保存しました — 続ける"),
    ("account.title", "Sign-in security", "サインインのセキュリティ"),
    ("account.totp_on", "An authenticator app is set up for this account.", "このアカウントには認証アプリが設定されています。"),
    ("account.totp_off", "No authenticator app is set up: your password alone signs you in.", "認証アプリが設定されていません。パスワードだけでサインインできる状態です。"),
    ("account.totp_setup", "Set up an authenticator app", "認証アプリを設定する"),
    ("account.totp_replace", "Move to a new phone or app", "新しいスマートフォン・アプリに移行する"),
    ("account.recovery_left", "Unused recovery codes: {} of {}.", "未使用のリカバリーコード: {} / {}"),
    ("account.recovery_new", "Make new recovery codes", "リカバリーコードを作り直す"),
    ("reauth.title", "Confirm it's you", "本人確認"),
    ("reauth.explain", "This action changes accounts or cannot be undone. Enter your password or a current one-time code again.", "この操作はアカウントを変更するか、元に戻せません。パスワードまたは現在のワンタイムコードをもう一度入力してください。"),
    ("reauth.failed", "That is not right. Try again.", "正しくありません。もう一度入力してください。"),
    ("reauth.submit", "Confirm", "確認"),
    ("nav.account", "Security", "セキュリティ"),
    ("nav.compose", "New message", "新規メール"),
    ("compose.title", "Write a message", "メールの作成"),
    ("compose.note", "This message is sent now by the continuity service (Breakwater), signed for your domain, not by your usual mail system; it will not appear in your usual Sent folder.", "このメールは通常のメールシステムではなく、事業継続サービス (Breakwater) から直ちに送信されます（ドメインの DKIM 署名付き）。通常の送信済みフォルダーには残りません。"),
    ("compose.off", "Sending is not available: the administrator has not turned it on.", "送信は利用できません。管理者が有効にしていません。"),
    ("compose.not_now", "Sending is available only while the mail host is unavailable. Use your usual mail system.", "送信はメールホストの障害中のみ利用できます。通常のメールシステムをお使いください。"),
    ("compose.refused", "Not sent:", "送信できませんでした:"),
    ("compose.stopped", "An administrator has stopped all sending from the continuity service.", "管理者が事業継続サービスからの送信をすべて停止しました。"),
    ("compose.from", "From", "差出人"),
    ("compose.bcc", "Bcc", "Bcc"),
    ("compose.subject", "Subject", "件名"),
    ("compose.send", "Send", "送信"),
    ("compose.forward_attachments", "The original's attachments are forwarded with it.", "元のメールの添付ファイルも転送されます。"),
    ("compose.sent_title", "Sent", "送信しました"),
    ("compose.sent_text", "Queued for {} recipients (queue ID {}); delivery retries until each one has it.", "{} 件の宛先への送信を受け付けました（キュー ID {}）。届くまで再送します。"),
    ("compose.copy_note", "Once your mail host is back, a copy goes to your own mailbox there, so the thread is complete.", "メールホストの復旧後、スレッドがそろうよう控えがあなたのメールボックスにも届きます。"),
    ("compose.no_copy_note", "It will not appear in your usual Sent folder; see Sent here.", "通常の送信済みフォルダーには残りません。ここの「送信済み」で確認できます。"),
    ("compose.attach", "Attachments", "添付ファイル"),
    ("compose.attach_limit", "the whole message at most {}", "メール全体で最大 {}"),
    ("compose.send_code", "Code from your authenticator app (asked once per sign-in before sending)", "認証アプリのコード（サインインごとに最初の送信時に確認します）"),
    ("send.not_yours", "{} is not one of your addresses.", "{} はあなたのアドレスではありません。"),
    ("send.no_key", "{} cannot send: it has no DKIM key. Ask the administrator.", "{} からは送信できません（DKIM 鍵がありません）。管理者にお問い合わせください。"),
    ("send.no_recipients", "Add at least one recipient.", "宛先を 1 件以上入力してください。"),
    ("send.too_many", "At most {} recipients per message (To, Cc and Bcc together).", "1 通の宛先は To・Cc・Bcc 合わせて最大 {} 件です。"),
    ("send.bad_recipient", "{} is not an address: {}", "{} はメールアドレスではありません: {}"),
    ("send.control", "The field \"{}\" holds a line break or another control character.", "「{}」に改行などの制御文字が含まれています。"),
    ("send.field_recipients", "recipients", "宛先"),
    ("send.field_reference", "reply reference", "返信元の参照"),
    ("send.rate", "You can send at most {} messages an hour. The next one in {} min.", "送信は 1 時間に {} 通までです。次の送信まであと {} 分です。"),
    ("send.too_large", "The message is {}; at most {} can be sent.", "メールのサイズは {} です。送信できるのは最大 {} です。"),
    ("send.failed", "Not queued: {}. Try again in a moment.", "送信キューに入れられませんでした: {}。少し待ってからもう一度お試しください。"),
    ("send.totp_enrol", "Sending needs two-factor authentication: set up an authenticator app on the Account page first.", "送信には二要素認証が必要です。先に「アカウント」ページで認証アプリを設定してください。"),
    ("send.totp_needed", "Enter the code from your authenticator app to send.", "送信するには認証アプリのコードを入力してください。"),
    ("send.totp_wrong", "That code is not right. Enter the current code from your authenticator app.", "コードが正しくありません。認証アプリの現在のコードを入力してください。"),
    ("send.totp_locked", "Too many wrong codes: try again later.", "誤ったコードが多すぎます。しばらくしてからお試しください。"),
    ("sent.title", "Sent", "送信済み"),
    ("sent.explain", "Messages you sent from here during the outage, with each recipient's delivery status.", "障害中にここから送信したメールと、宛先ごとの配送状況です。"),
    ("sent.empty", "You have not sent anything from here.", "ここから送信したメールはありません。"),
    ("sent.queued", "queued", "送信待ち"),
    ("sent.deferred", "retrying", "再送中"),
    ("sent.delivered", "delivered", "配送済み"),
    ("sent.failed", "failed", "配送失敗"),
    ("sent.finished", "done (no longer held here)", "完了（保管期間終了）"),
    ("sent.copy", "Copy to your mailbox:", "あなたのメールボックスへの控え:"),
    ("drills.send_probe", "Sending probe", "送信のテスト"),
    ("drills.sent_by_users", "Sent by users during the drill", "訓練中に利用者が送信した数"),
    ("sending.title", "Sending from the web reader", "Web リーダーからの送信"),
    ("sending.open", "open", "利用可能"),
    ("sending.stopped", "stopped by an administrator", "管理者が停止中"),
    ("sending.explain", "Stopping takes effect for every user at once and survives a restart; messages already queued are still delivered (hold or delete them in the spool).", "停止はすべての利用者に直ちに適用され、再起動後も続きます。すでにキューにあるメールは配送されます（スプールで保留・削除できます）。"),
    ("action.stop_sending", "Stop all sending", "すべての送信を停止"),
    ("action.resume_sending", "Resume sending", "送信を再開"),
    ("nav.sent", "Sent", "送信済み"),
    ("message.reply", "Reply", "返信"),
    ("message.reply_all", "Reply all", "全員に返信"),
    ("message.forward", "Forward", "転送"),
    ("login.phishing_hint", "Breakwater never asks for your Microsoft 365 password. Use the password your IT team gave you for this service.", "Breakwater が Microsoft 365 のパスワードを求めることはありません。IT 部門から配布されたこのサービス専用のパスワードを使用してください。"),
    ("totp.title", "One-time code", "ワンタイムコード"),
    ("totp.prompt", "Enter the 6-digit code from your authenticator app.", "認証アプリに表示される 6 桁のコードを入力してください。"),
    ("totp.code", "Code", "コード"),
    ("totp.submit", "Verify", "確認"),
    ("totp.failed", "That code is not right or was already used.", "コードが正しくないか、すでに使用されています。"),
    ("logout", "Sign out", "サインアウト"),
    ("nav.mailbox", "Mailbox", "受信箱"),
    ("nav.admin", "Spool", "スプール"),
    ("nav.upstreams", "Upstreams", "配送先"),
    ("nav.audit", "Audit log", "監査ログ"),
    ("nav.sessions", "Sessions", "セッション"),
    ("banner.down", "{} is not accepting mail (since {}). Your mail is kept safely here and will be delivered automatically when it recovers.", "{} がメールを受け付けていません（{} から）。メールはここに安全に保管され、復旧すると自動的に配送されます。"),
    ("banner.held", "Delivery to {} is paused by the administrators. Your mail is kept safely here.", "{} への配送は管理者により一時停止されています。メールはここに安全に保管されています。"),
    ("banner.drill", "A failover drill is in progress ({}, since {}): delivery is paused on purpose and mail is kept here.", "フェイルオーバー訓練を実施中です（{}、{} から）。配送は意図的に停止されており、メールはここに保管されています。"),
    ("nav.drills", "Drills", "訓練"),
    ("drills.title", "Failover drills", "フェイルオーバー訓練"),
    ("drills.none", "No drill has been run yet. Start one with: breakwater drill start --probe-to you@example.com", "訓練はまだ実施されていません。breakwater drill start --probe-to you@example.com で開始できます。"),
    ("drills.running", "Running now", "実施中"),
    ("drills.problems", "Problems found", "見つかった問題"),
    ("drills.drain", "Drain", "滞留解消"),
    ("lure.short", "Suspicious", "不審"),
    ("headers.malformed", "Malformed header lines (not read as headers here; other mail programs may show this message differently):", "不正な形式のヘッダー行があります（ここではヘッダーとして扱っていません。他のメールソフトでは表示が異なる場合があります）:"),
    ("lure.title", "This message looks like an outage-themed phishing attempt.", "このメッセージは障害に便乗したフィッシングの可能性があります。"),
    ("lure.explain", "Do not enter passwords or open links in it; check with your IT team through another channel. Why:", "パスワードの入力やリンクのクリックはせず、別の手段で IT 部門に確認してください。理由:"),
    ("lure.reason.brand-words", "It speaks in the name of Microsoft 365 / IT.", "Microsoft 365 や IT 部門を名乗っています。"),
    ("lure.reason.action-words", "It asks you to act: password, verify, restore, reschedule…", "パスワード・確認・復旧・予定変更などの操作を求めています。"),
    ("lure.reason.display-name-impersonation", "The sender's name claims Microsoft/IT, but the address is from elsewhere.", "差出人名は Microsoft や IT 部門ですが、アドレスは別のドメインです。"),
    ("lure.reason.own-domain-spoofed", "It claims to come from our own domain, but was sent from elsewhere.", "自社ドメインを名乗っていますが、別の場所から送信されています。"),
    ("lure.reason.link-text-mismatch", "A link shows one address but goes to another.", "リンクの表示と実際の行き先が異なります。"),
    ("lure.reason.punycode-link", "A link goes to an internationalised (punycode) look-alike domain.", "リンク先が国際化ドメイン（punycode）の偽装ドメインです。"),
    ("lure.reason.look-alike-link", "A link goes to a domain made to look like Microsoft's.", "リンク先が Microsoft に似せたドメインです。"),
    ("lure.reason.recently-registered-link", "A link goes to a recently registered domain.", "リンク先が最近登録されたドメインです。"),
    ("lure.reason.credential-form", "It contains a form asking for a password.", "パスワードを入力させるフォームが含まれています。"),
    ("lure.reason.dmarc-fail", "Its sender domain failed DMARC: the From address is not proven.", "送信元ドメインの DMARC 認証に失敗しています（差出人アドレスが証明されていません）。"),
    ("lure.reason.own-domain-dmarc-fail", "It claims our own domain but fails DMARC: a forgery.", "自社ドメインを名乗っていますが DMARC 認証に失敗しています（なりすまし）。"),
    ("lure.reason.not-dmarc-aligned", "Its sender domain is not authenticated (no DMARC alignment).", "送信元ドメインが認証されていません（DMARC 整合なし）。"),
    ("lure.reason.during-outage", "It arrived while the mail service is down, when such lures are sent.", "メールサービスの障害中に届きました（便乗詐欺が多い時期です）。"),
    ("auth.failed", "Sender authentication failed (DMARC) for", "送信元認証（DMARC）に失敗しました:"),
    ("auth.quarantined", "The sender's domain asks that failing mail be quarantined.", "送信元ドメインは認証失敗メールの隔離を求めています。"),
    ("mailbox.title", "Mailbox", "受信箱"),
    ("mailbox.empty", "No messages are waiting here for you.", "ここに保管されているメッセージはありません。"),
    ("mailbox.search", "Search subject, sender, text", "件名・差出人・本文を検索"),
    ("mailbox.search_button", "Search", "検索"),
    ("mailbox.partial", "Mail held by the other Breakwater servers cannot be shown right now (their shared database does not answer); this list has only this server's. Try again in a minute.", "他の Breakwater サーバーが保管しているメールは現在表示できません（共有データベースが応答しません）。この一覧はこのサーバーのメールのみです。しばらくしてから再度お試しください。"),
    ("mailbox.search_building", "The search index is still being built: this search read every message, and may have been slow.", "検索インデックスを作成中のため、すべてのメッセージを読んで検索しました（時間がかかることがあります）。"),
    ("mailbox.count", "{} messages", "{} 件"),
    ("mailbox.newer", "Newer", "新しい"),
    ("mailbox.older", "Older", "古い"),
    ("col.from", "From", "差出人"),
    ("col.to", "To", "宛先"),
    ("col.cc", "Cc", "Cc"),
    ("col.subject", "Subject", "件名"),
    ("col.date", "Date", "日時"),
    ("col.size", "Size", "サイズ"),
    ("col.status", "Status", "状態"),
    ("col.attachment", "Attachment", "添付"),
    ("col.recipient", "Recipient", "受信者"),
    ("col.attempts", "Attempts", "試行回数"),
    ("col.last_reply", "Last reply", "最後の応答"),
    ("col.id", "Queue ID", "キュー ID"),
    ("col.actor", "Who", "実行者"),
    ("col.action", "Action", "操作"),
    ("col.target", "Target", "対象"),
    ("col.result", "Result", "結果"),
    ("col.ip", "IP address", "IP アドレス"),
    ("col.user", "User", "ユーザー"),
    ("col.started", "Started", "開始"),
    ("col.last_seen", "Last seen", "最終アクセス"),
    ("col.upstream", "Upstream", "配送先"),
    ("col.state", "State", "状態"),
    ("col.since", "Since", "開始時刻"),
    ("col.depth", "Waiting", "待機中"),
    ("col.error", "Last error", "最後のエラー"),
    ("status.waiting", "Waiting for {}", "{} の復旧待ち"),
    ("status.held", "Held", "保留中"),
    ("status.delivered", "Delivered", "配送済み"),
    ("status.failed", "Returned to sender", "差出人に返送"),
    ("message.no_subject", "(no subject)", "（件名なし）"),
    ("message.attachments", "Attachments", "添付ファイル"),
    ("message.source", "View source", "ソースを表示"),
    ("message.back", "Back to the mailbox", "受信箱に戻る"),
    ("message.images_blocked", "Remote images blocked to protect your privacy: {}.", "プライバシー保護のため {} 件の外部画像をブロックしました。"),
    ("message.load_images", "Load remote images", "外部画像を表示"),
    ("message.text_version", "Text version", "テキスト版"),
    ("message.html_version", "HTML version", "HTML 版"),
    ("message.frame_title", "Message body", "メッセージ本文"),
    ("admin.title", "Spool", "スプール"),
    ("admin.filter", "Filter", "絞り込み"),
    ("admin.next", "Next page", "次のページ"),
    ("admin.view", "Read message (audited)", "メッセージを読む（監査対象）"),
    ("admin.confirm", "Are you sure?", "実行してよろしいですか？"),
    ("admin.done", "Done: {}", "完了: {}"),
    ("action.hold", "Hold", "保留"),
    ("action.release", "Release", "保留解除"),
    ("action.retry", "Retry now", "今すぐ再送"),
    ("action.delete", "Delete", "削除"),
    ("action.bounce", "Return to sender", "差出人に返送"),
    ("action.flush", "Flush", "フラッシュ"),
    ("action.revoke", "Revoke", "失効"),
    ("upstreams.title", "Upstreams", "配送先"),
    ("upstreams.none", "No upstream has been contacted yet.", "まだ配送先への接続はありません。"),
    ("audit.title", "Audit log", "監査ログ"),
    ("sessions.title", "Signed-in sessions", "サインイン中のセッション"),
    ("error.not_found", "Not found.", "見つかりません。"),
    ("error.forbidden", "You are not allowed to do this.", "この操作は許可されていません。"),
    ("error.admin_network", "Admin pages are only available from the administrators' networks.", "管理ページは管理者用ネットワークからのみ利用できます。"),
    ("error.csrf", "The form expired or came from another site. Reload the page and try again.", "フォームの有効期限切れ、または別のサイトからの送信です。ページを再読み込みしてやり直してください。"),
    ("error.internal", "Something went wrong on the server. The administrators can find details in the log.", "サーバーでエラーが発生しました。詳細は管理者がログで確認できます。"),
    ("lang.switch", "日本語", "English"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_both_languages_and_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for (key, en, ja) in TEXT {
            assert!(seen.insert(key), "duplicate key {key}");
            assert!(!en.is_empty() && !ja.is_empty(), "{key} incomplete");
            assert_eq!(en.matches("{}").count(), ja.matches("{}").count(), "{key}");
        }
    }

    /// A key used in the web pages but missing from the table shows "?"
    /// in a release build: every literal that looks like one of the
    /// table's keys (its prefix before the dot is one the table uses)
    /// must be in it.
    #[test]
    fn every_key_the_pages_use_is_in_the_table() {
        let prefixes: std::collections::HashSet<&str> = TEXT
            .iter()
            .filter_map(|(key, _, _)| key.split_once('.').map(|(p, _)| p))
            .collect();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web");
        let mut missing = Vec::new();
        let mut files = vec![dir.clone()];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for literal in text.split('"').skip(1).step_by(2) {
                let Some((prefix, rest)) = literal.split_once('.') else {
                    continue;
                };
                let keyish = !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                    && prefixes.contains(prefix);
                if keyish && !TEXT.iter().any(|(k, _, _)| k == &literal) {
                    missing.push(format!("{}: {literal}", path.display()));
                }
            }
        }
        assert!(missing.is_empty(), "not in the table: {missing:#?}");
    }

    #[test]
    fn accept_language_prefers_highest_q() {
        assert_eq!(
            Lang::from_accept_language("ja-JP,ja;q=0.9,en;q=0.8"),
            Some(Lang::Ja)
        );
        assert_eq!(
            Lang::from_accept_language("fr, en;q=0.5, ja;q=0.4"),
            Some(Lang::En)
        );
        assert_eq!(Lang::from_accept_language("de"), None);
    }
}
