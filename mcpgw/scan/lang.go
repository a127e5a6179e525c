package scan

// Patterns in languages other than English. They run on normalised text (NFKC, lower-cased, invisible
// characters and Arabic diacritics removed, look-alike letters folded within mixed-script words), and use no
// \b: Go's \b knows only ASCII word characters. Each list is short on purpose: imperative verbs addressed to
// the model, the objects that make them dangerous (instructions, the user, keys, URLs), and adverbs of
// secrecy that tool descriptions have no business using.

var multilingual = []struct {
	rule  Rule
	exprs []string
}{
	{HiddenInstruction, []string{
		// German
		`(ignorier|missacht|vergiss|übergeh)\S*.{0,40}(anweisung|instruktion|regeln|vorgaben|richtlinie)`,
		`(neue|aktualisierte|echte|geänderte)n? (system)?anweisung|systemprompt|system-prompt`,
		`(sag|erzähl|verrat|erwähn|teil|zeig)\S* (dem|der|den|es dem|es der) (benutzer|nutzer|anwender)\S* (nichts|nicht|niemals|kein)`,
		`ohne (den |die |dass )?(benutzer|nutzer|anwender)\S* .{0,20}(informieren|fragen|benachrichtigen|merkt|erfährt|weiß)`,
		`heimlich|stillschweigend|unbemerkt|insgeheim`,
		`bevor du (dieses|das|ein) (tool|werkzeug)`,
		`entwicklermodus|ohne einschränkungen`,
		// French
		`ignor\S*.{0,40}(instructions|consignes|règles|directives)`,
		`oubli\S*.{0,30}(instructions|consignes|règles|directives)`,
		`nouvelles? instructions? (système|systeme)|(prompt|instructions?) (système|systeme)`,
		`ne (lui |leur |le |en )?(dis|dites|mentionne|mentionnez|révèle|révélez|signale|signalez|parle|parlez)\S* (rien|pas|jamais)`,
		`sans (en )?(informer|prévenir|avertir|le dire à|demander à|le signaler à) (l'|l’|les? )?utilisateur`,
		`à l'insu|à l’insu|secrètement|en secret|en cachette|discrètement|silencieusement`,
		`avant d'utiliser (cet|cette|l')|avant d’utiliser (cet|cette|l’)`,
		`mode développeur|sans (aucune )?restriction`,
		// Spanish
		`ignora\S*.{0,40}(instrucciones|indicaciones|reglas|directrices)`,
		`olvida\S*.{0,30}(instrucciones|indicaciones|reglas|directrices)`,
		`(nuevas )?instrucciones del sistema|prompt del sistema`,
		`no (le |les |se lo )?(digas|informes|menciones|reveles|avises|cuentes|muestres)`,
		`sin (informar|avisar|decir|notificar|preguntar)(le|les)? (nada )?al usuario`,
		`el usuario no (debe|puede|tiene que) (saber|ver|enterarse)`,
		`en secreto|secretamente|a escondidas|silenciosamente|sin que (el usuario|nadie) (lo )?sepa`,
		`antes de usar (esta|la) herramienta`,
		`modo desarrollador|sin restricciones`,
		// Russian
		`игнорир\S*.{0,40}(инструкц|указани|правил)`,
		`(забудь|забудьте|проигнорируй)\S*.{0,40}(инструкц|указани|правил)`,
		`не (говори|сообщай|рассказывай|упоминай|показывай|сообщайте|говорите|рассказывайте)\S*.{0,30}пользовател`,
		`пользовател\S* не (должен|должна|должны) (знать|видеть|узнать)`,
		`без ведома|втайне|тайно|незаметно|скрытно`,
		`системн\S* (инструкц|промпт|подсказ|указани)`,
		`перед использованием`,
		`режим\S* разработчика|без ограничений`,
		// Chinese
		`(忽略|无视|忽视|不要理会|忘记|忘掉).{0,20}(指令|指示|说明|规则|提示|要求)`,
		`系统(提示|指令|指示)`,
		`不要(告诉|通知|提醒|透露|让).{0,10}(用户|使用者)`,
		`(用户|使用者)不(应|能|得|需要)(知道|看到|察觉)`,
		`偷偷|悄悄|秘密地|暗中|私下`,
		`使用(此|这个|该|本)工具(之)?前`,
		`开发者模式|没有任何限制`,
		// Japanese
		`(指示|命令|ルール|規則|指令|プロンプト).{0,15}(無視|忘れ)`,
		`システム(プロンプト|指示|命令)`,
		`(ユーザー|利用者)(に|には).{0,20}(知らせ|伝え|言わ|教え|通知し)(ない|ず)`,
		`こっそり|密かに|ひそかに|秘密裏に|内緒で`,
		`(この|本)ツールを(使う|使用する|呼び出す)前に`,
		`開発者モード|制限のない`,
		// Arabic (diacritics removed)
		`تجاهل.{0,40}(التعليمات|الاوامر|الأوامر|القواعد|الإرشادات|الارشادات)`,
		`(انس|إنس).{0,20}(قواعد|تعليمات)`,
		`تعليمات النظام|موجه النظام|أوامر النظام`,
		`لا (تخبر|تبلغ|تعلم|تذكر|تكشف|تظهر).{0,20}المستخدم`,
		`(دون|بدون) (علم|إبلاغ|ابلاغ|إخبار|اخبار|إعلام) المستخدم`,
		`سرا|خفية|خلسة|بصمت`,
		`قبل استخدام هذه الأداة`,
		`وضع المطور|بلا قيود`,
	}},
	{SecretAccess, []string{
		`(lies|lese|lesen|öffne|kopiere|hole|gib|sende|schicke|füge)\S*.{0,50}(privat\S* schlüssel|ssh-schlüssel|api-schlüssel|passw(ö|o)rt|zugangsdaten|anmeldedaten|token)`,
		`(lis|lire|ouvre|copie|récupère|envoie|transmets|donne|mets)\S*.{0,50}(clés? privées?|clés? ssh|mots? de passe|identifiants|jetons?|clés? api)`,
		`(lee|leer|abre|copia|obtén|obten|envía|envia|pasa|extrae|incluye)\S*.{0,50}(claves? privadas?|claves? ssh|contraseñas?|credenciales|tokens?|claves? api)`,
		`(прочитай|прочти|прочитать|открой|скопируй|отправь|получи|передай|извлеки|добавь)\S*.{0,50}(приватн\S* ключ|ssh[- ]?ключ|парол|учётн|учетн|токен|api[- ]?ключ)`,
		`(读取|打开|复制|发送|获取|提取|收集|读).{0,20}(私钥|密钥|密码|凭据|凭证|令牌)`,
		`(秘密鍵|ssh ?鍵|ssh ?キー|パスワード|認証情報|資格情報|トークン|api ?キー).{0,30}(読み|読ん|取得|送信|コピー|含め|入れ|渡)`,
		`(読み取|読ん|取得し|送信し|コピーし).{0,20}(秘密鍵|パスワード|認証情報|資格情報|トークン)`,
		`(اقرأ|اقرا|افتح|انسخ|أرسل|ارسل|استخرج|اجمع).{0,50}(المفتاح الخاص|مفاتيح|كلمة المرور|كلمات المرور|بيانات الاعتماد|الرموز المميزة)`,
	}},
	{Exfiltration, []string{
		`(sende|schicke|übermittle|übertrage|lade|leite|poste)\S*.{0,80}(https?://|webhook|\d{1,3}(\.\d{1,3}){3})`,
		`gesprächsverlauf|chatverlauf|(gesamten?|ganzen?) (gespräch|unterhaltung|chat)`,
		`(envoie|envoyer|transmets|transmettre|téléverse|transfère|poste)\S*.{0,80}(https?://|webhook|\d{1,3}(\.\d{1,3}){3})`,
		`(toute la|l'intégralité de la|l’intégralité de la) (conversation|discussion)|historique (de la |des )?(conversation|discussion|messages)`,
		`(envía|envia|enviar|manda|transmite|sube|reenvía|reenvia)\S*.{0,80}(https?://|webhook|\d{1,3}(\.\d{1,3}){3})`,
		`toda la conversación|historial (de la |del )?(conversación|chat)`,
		`(отправ|перешл|пересыл|передай|загрузи|выгрузи)\S*.{0,80}(https?://|webhook|\d{1,3}(\.\d{1,3}){3})`,
		`(всю|всей) (переписк|беседу|диалог)|истори\S* (чата|переписки|диалога)`,
		`(发送|上传|转发|传送|发到|提交).{0,40}(https?://|webhook)`,
		`完整的?对话|(对话|聊天)(记录|历史)`,
		`https?://\S+.{0,20}(に|へ)(送信|送っ|送る|アップロード|転送)`,
		`(送信|アップロード|転送).{0,40}https?://`,
		`会話(全体|の履歴|履歴)|チャット履歴`,
		`(أرسل|ارسل|ارفع|حمل|انقل|أعد توجيه|اعد توجيه).{0,80}(https?://|webhook)`,
		`المحادثة (كاملة|بالكامل)|سجل المحادثة`,
	}},
	{ToolShadowing, []string{
		`(leite|sende|schicke)\S* alle (e-mails|mails|nachrichten)`,
		`(transfère|transférer|redirige|envoie)\S* tous les (e-mails|mails|courriels|messages)`,
		`(reenvía|reenvia|redirige|envía|envia) todos los (correos|mensajes|emails)`,
		`(пересыл|перешли|перенаправ)\S* все (письма|сообщения)`,
		`(所有|全部)(邮件|消息).{0,10}(转发|发送|重定向)`,
		`(すべて|全て)の(メール|メッセージ)を.{0,40}(転送|送信)`,
		`(أعد توجيه|اعد توجيه|حول|أرسل|ارسل) (كل|جميع) (الرسائل|رسائل البريد)`,
	}},
}
